"""The model and training settings (docs/design.md §2), the checkpoint format version and the data credit.

Valid ranges of user-facing settings live in :mod:`sdecore.limits`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from .limits import MAP_KINDS, PRECISIONS, check_choice, check_int, check_seed

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"  # its tokenizer and input embeddings, shipped offline
FORMAT_VERSION = 1
DATA_CREDIT = "NVIDIA HelpSteer (CC-BY-4.0)"

@dataclass
class ModelConfig:
    """Shape of the text SDE.

    The state is ``y = [x, h_1, ..., h_K]``: the standardised token embedding ``x`` and
    K exponential moving averages of it, ``dh_j = (x - h_j) / tau_j dt``, one per memory
    time scale (in units of ``dt``, the time of one token).
    """

    embedder: str = DEFAULT_EMBEDDER
    dim: int = 384
    dt: float = 1.0
    memory_timescales: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 64.0)
    drift_hidden: int = 512
    diffusion_hidden: int = 128
    # The emission's read-out (docs/design.md §2.4): 0 reads tokens at the predicted state
    # x + mu dt itself; a width > 0 adds a learned shift r(z), an MLP of that width on the nets'
    # input, so the drift fits the increments and the read-out the tokens.
    readout_hidden: int = 512
    dropout: float = 0.3
    sigma_min: float = 1e-3
    input_clip: float = 4.0  # inputs to the nets pass through c*tanh(./c): identity near the data, bounded far off
    tau_init: float = 4.0  # initial emission spread: wide, since 384-D Gaussians are sharply peaked
    prior_smoothing: float = 0.1  # add-alpha smoothing of the emission's unigram prior
    divergence_radius: float = 8.0  # a path whose |x| exceeds this times the vocabulary cloud's radius is stopped

    @property
    def memory_dim(self) -> int:
        return self.dim * len(self.memory_timescales)

    @property
    def state_dim(self) -> int:
        return self.dim + self.memory_dim

    def validate(self) -> ModelConfig:
        if self.dt <= 0 or not math.isfinite(self.dt):
            raise ValueError(f"dt must be a positive number, got {self.dt}")
        if self.readout_hidden < 0:
            raise ValueError(f"readout_hidden must be 0 (no read-out) or a positive width, got {self.readout_hidden}")
        if any(tau < self.dt for tau in self.memory_timescales):
            # Euler steps of the memory ODE are stable (and exact at tau = dt) only for dt/tau <= 1.
            raise ValueError(f"memory time scales must be at least dt={self.dt}, got {self.memory_timescales}")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; the checkpoint is from a newer version")
        d = dict(d)
        d.setdefault("readout_hidden", 0)  # a checkpoint from before the read-out has none
        if "memory_timescales" in d:
            d["memory_timescales"] = tuple(float(v) for v in d["memory_timescales"])
        return cls(**d).validate()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memory_timescales"] = list(self.memory_timescales)
        return d


@dataclass
class TrainConfig:
    """Optimisation settings. Loss weights follow docs/design.md §2.5: the total is
    ``drift + diffusion + ce_weight * cross-entropy``."""

    epochs: int = 10
    batch_size: int = 512
    # A batch is batch_size // window windows, each up to `window` consecutive positions of one
    # sequence, with the memory computed from the sequence's start (docs/design.md §2.5). At 1 a
    # batch is batch_size transitions drawn at random from the whole corpus.
    window: int = 1
    lr: float = 2e-3
    emission_lr: float = 2e-2  # the emission's few parameters (tau, prior weight) move fast, undecayed
    weight_decay: float = 0.05
    drift_weight: float = 1.0
    diffusion_weight: float = 1.0
    ce_weight: float = 2.0
    ce_fraction: float = 0.5  # share of each batch's positions that enter the (costly) cross-entropy
    # With a read-out, whether the cross-entropy's gradient also reaches the drift (off: the drift
    # fits the increments alone, docs/design.md §2.5; on: the ablation that shows why)
    ce_trains_drift: bool = False
    # Off-token states: this share of each batch's drift and diffusion rows start from a
    # token embedding plus Gaussian noise of a random size up to `perturb_max` (standardised
    # units per dimension), so the drift is also fitted where unsnapped paths go and pulls back.
    perturb_fraction: float = 0.5
    perturb_max: float = 3.0
    val_fraction: float = 0.2
    include_prompts: bool = True
    max_rows: int | None = None
    seed: int = 0
    grad_clip: float = 5.0
    map: str = "none"  # reference map fitted after training: none, pca or umap
    # fp32, or bf16: the drift and diffusion nets' forward pass under bfloat16 autocast (for GPUs
    # with bfloat16 units; the emission and every loss stay float32; docs/design.md §2.5)
    precision: str = "fp32"

    def validate(self) -> TrainConfig:
        """The settings checked with :mod:`sdecore.limits` (``ValueError`` naming the flag)."""
        self.epochs, self.seed = check_int(self.epochs, "--epochs", 1), check_seed(self.seed)
        if self.max_rows is not None:
            self.max_rows = check_int(self.max_rows, "--max-rows", 1)
        self.batch_size = check_int(self.batch_size, "--batch-size", 1)
        self.window = check_int(self.window, "window", 1)
        self.map = check_choice(self.map, MAP_KINDS, "--map")
        self.precision = check_choice(self.precision, PRECISIONS, "--precision")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if not 0 < self.ce_fraction <= 1:
            raise ValueError(f"ce_fraction must lie in (0, 1], got {self.ce_fraction}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)
