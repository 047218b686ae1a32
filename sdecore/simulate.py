"""Sample paths of the text SDE from a prompt, and their decoded text (docs/design.md §3).

Each new token is one SDE step of length dt, integrated with ``substeps`` solver steps:
``em`` (the engine's own Euler-Maruyama loop) or ``euler``, ``milstein``, ``srk`` through
``torchsde.sdeint``. All solvers read one seeded ``torchsde.BrownianInterval`` per run,
queried on the same grid, so a seed fixes the Brownian path for every diffusion scale and
every solver: moving the scale bends one path instead of drawing another.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torchsde

from . import onednn
from .embedding import Embedder
from .limits import MAX_PROMPT_TOKENS, SOLVERS, check_choice, check_limit, check_seed, check_temperature, progress_delay
from .model import ScaledSDE, TextSDE

log = logging.getLogger(__name__)


@dataclass
class Paths:
    """Sample paths from one prompt.

    token_ids: (paths, steps) generated ids, -1 after a path diverged;
    probs: (paths, steps) emission probability of each decoded token;
    states: (paths, steps + 1, dim) continuous x at the prompt's last token and after
    each token step (before snapping), NaN after divergence; None unless recorded;
    drift: (paths, steps + 1, dim) mu and sigma2: (paths, steps + 1) sum_d sigma_d^2 (before
    the diffusion scale), both evaluated at ``states`` with their memory ``memory``
    (paths, steps + 1, K * dim); None unless recorded;
    times: (steps + 1,); diverged: (paths,) bool; diverged_at: (paths,) step index or -1;
    diffusion_scale: the s the paths were simulated at.
    """

    prompt_ids: list[int]
    token_ids: torch.Tensor
    probs: torch.Tensor
    times: torch.Tensor
    diverged: torch.Tensor
    diverged_at: torch.Tensor
    diffusion_scale: float = 1.0
    states: torch.Tensor | None = None
    drift: torch.Tensor | None = None
    sigma2: torch.Tensor | None = None
    memory: torch.Tensor | None = None

    def continuation(self, i: int) -> list[int]:
        ids = self.token_ids[i]
        return [int(v) for v in ids[ids >= 0]]


def check_prompt(embedder: Embedder, prompt: str) -> list[int]:
    """Token ids of a prompt, cut to its last MAX_PROMPT_TOKENS tokens (with a warning)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty; give some text, e.g. --prompt \"How can I improve my sleep?\"")
    ids = embedder.encode(prompt)
    if not ids:
        raise ValueError("the prompt has no known tokens; give some words the tokenizer knows")
    if len(ids) > MAX_PROMPT_TOKENS:
        log.warning("the prompt has %d tokens; only its last %d are read", len(ids), MAX_PROMPT_TOKENS)
        ids = ids[-MAX_PROMPT_TOKENS:]
    return ids


class StateNoise(torchsde.BaseBrownian):
    """A Brownian path that drives only the first ``noisy`` coordinates of a state of size
    ``state_dim``: increments (and Levy areas) are drawn for those alone and padded with zeros,
    since the memory has no noise (``g = 0`` there). torchsde's solvers take it like any
    Brownian path of shape (paths, state_dim); drawing 384 of the 2,688 coordinates is seven
    times less noise to generate and to cache."""

    def __init__(self, inner: torchsde.BrownianInterval, state_dim: int):
        super().__init__()
        self.inner, self.state_dim = inner, state_dim

    def _pad(self, a: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(a, (0, self.state_dim - a.shape[-1]))

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        out = self.inner(ta, tb, return_U=return_U, return_A=return_A)
        return tuple(self._pad(a) for a in out) if isinstance(out, tuple) else self._pad(out)

    def __repr__(self) -> str:
        return f"StateNoise({self.inner!r}, state_dim={self.state_dim})"

    @property
    def dtype(self):
        return self.inner.dtype

    @property
    def device(self):
        return self.inner.device

    @property
    def shape(self):
        return (*self.inner.shape[:-1], self.state_dim)

    @property
    def levy_area_approximation(self):
        return self.inner.levy_area_approximation


BROWNIAN_CACHE_BYTES = 64 * 2**20  # the most a run's Brownian path keeps of recent increments


def brownian_path(t0: float, t1: float, paths: int, noise_dim: int, step: float, seed: int,
                  device: torch.device, dtype=torch.float32, state_dim: int | None = None):
    """The run's one Brownian path, of ``noise_dim`` coordinates (padded with zeros to
    ``state_dim`` when given, :class:`StateNoise`). ``dt`` is set (torchsde is tens of times
    slower without it) and the space-time Levy area is always drawn, so the increments W are
    the same for ``srk`` (which needs the area) and for every other solver. Its cache of recent
    increments is bounded (:func:`_bound_cache`)."""
    bm = torchsde.BrownianInterval(t0=t0, t1=t1, size=(paths, noise_dim), dtype=dtype, device=device,
                                   entropy=seed, dt=step, levy_area_approximation="space-time")
    _bound_cache(bm, 2 * paths * noise_dim * torch.finfo(dtype).bits // 8)
    return bm if state_dim is None or state_dim == noise_dim else StateNoise(bm, state_dim)


def _bound_cache(bm: torchsde.BrownianInterval, entry_bytes: int, least: int = 4) -> None:
    """Hold ``bm``'s cache of recent intervals to :data:`BROWNIAN_CACHE_BYTES` (``least`` entries at
    the fewest). torchsde keeps the increment and Levy area of the 45 intervals used last, each
    (paths x noise) twice: 566 MB at 4,096 paths, which a long run fills. The values never depend
    on the cache: an interval dropped from it is drawn again from its own seed (torchsde's
    design); only the tree's shape depends on the cache size given at construction, and it is
    built by then. A few hundred paths or fewer keep the whole cache (a smaller one costs a few
    percent there, as intervals are drawn again); where torchsde's private cache is not found,
    the path is left as it is."""
    try:
        from torchsde._brownian.brownian_interval import _LRUDict
    except ImportError:  # pragma: no cover - another torchsde layout
        return
    cache = getattr(bm, "_increment_and_space_time_levy_area_cache", None)
    entries = max(least, BROWNIAN_CACHE_BYTES // max(1, entry_bytes))
    if isinstance(cache, _LRUDict) and not cache and entries < getattr(cache, "_max_size", 0):
        bm._increment_and_space_time_levy_area_cache = _LRUDict(max_size=entries)


def solver_grid(t0: torch.Tensor, t1: torch.Tensor, step: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (start, end) of each fixed step torchsde takes from t0 to t1 (its own rule:
    ``next = min(t + step, t1)``), so ``em`` queries the Brownian path exactly as
    ``sdeint`` does."""
    grid, t = [], t0
    while t < t1:
        nxt = torch.minimum(t + step, t1)
        grid.append((t, nxt))
        t = nxt
    return grid


@dataclass(frozen=True)
class SampleRequest:
    """The settings of one run of :func:`simulate_paths` (its keyword arguments, the prompt first)."""

    prompt: str
    paths: int = 8
    tokens: int = 32
    diffusion_scale: float = 1.0
    solver: str = "em"
    substeps: int = 1
    seed: int = 0
    snap: bool = True
    temperature: float = 0.0
    record_states: bool = False

    def checked(self) -> SampleRequest:
        """The same request with every setting checked against its valid range (ValueError)."""
        return replace(self, paths=check_limit("paths", self.paths), tokens=check_limit("tokens", self.tokens),
                       diffusion_scale=check_limit("diffusion_scale", self.diffusion_scale),
                       substeps=check_limit("substeps", self.substeps),
                       solver=check_choice(self.solver, SOLVERS, "--solver"), seed=check_seed(self.seed),
                       temperature=check_temperature(self.temperature))


@torch.no_grad()
def simulate_paths(
    model: TextSDE,
    embedder: Embedder,
    prompt: str,
    *,
    paths: int = 8,
    tokens: int = 32,
    diffusion_scale: float = 1.0,
    solver: str = "em",
    substeps: int = 1,
    seed: int = 0,
    snap: bool = True,
    temperature: float = 0.0,
    record_states: bool = False,
    progress: bool = False,
) -> Paths:
    """Generate ``paths`` continuations of ``prompt``, ``tokens`` tokens each.

    The prompt is read through the memory (teacher forcing) to give the start state;
    each token is one SDE step of length dt; after it the token the emission decodes at
    the new x, shifted by the read-out taken at the step's start, is recorded (never a word piece
    first) and, with ``snap``, x is set to that token's embedding. A path
    whose x becomes non-finite or leaves the ball of ``divergence_radius`` times the
    vocabulary cloud's radius is stopped and flagged; the others go on. With ``progress``, a
    bar on stderr counts the tokens of a run that lasts more than two seconds, when stderr is
    a terminal.
    """
    request = SampleRequest(prompt, paths=paths, tokens=tokens, diffusion_scale=diffusion_scale, solver=solver,
                            substeps=substeps, seed=seed, snap=snap, temperature=temperature,
                            record_states=record_states)
    return simulate_requests(model, embedder, [request], progress=progress)[0]


class Cancelled(Exception):
    """A run of :func:`simulate_requests` stopped by its ``cancel`` callback before it ended."""


@torch.no_grad()
def simulate_requests(model: TextSDE, embedder: Embedder, requests: list[SampleRequest], *,
                      progress: bool = False, cancel: Callable[[], bool] | None = None) -> list[Paths]:
    """Several runs of :func:`simulate_paths` at once, each giving exactly what it gives alone
    (docs/design.md §3): the runs advance token by token in lockstep and their matrix products,
    the nets' and the decode's, go through the same kernel in one batch, which gives every row
    the value it gets alone (oneDNN's prepacked product does not depend on the other rows); the
    element-wise work, the Brownian path and the record stay each run's own. A run of one path, or
    with one path left, keeps its own products (at one row the plain product is used, whose
    rounding differs); runs at a temperature decode apart, each with its generator. Only ``em``
    runs can share a batch; another solver runs alone. Where the packed kernels do not run (a GPU,
    ``SDECORE_ONEDNN=0``; :meth:`TextSDE.batches_exactly`), the runs are simulated one after
    another instead, still each exactly as alone. ``cancel``, when given, is asked before each token
    step; when it answers True the runs stop there and :class:`Cancelled` is raised (the
    dashboard's worker drops a speculative run this way when a session's request arrives)."""
    requests = [r.checked() for r in requests]
    if not requests:
        return []
    if len(requests) > 1 and any(r.solver != "em" for r in requests):
        raise ValueError("only em runs can be simulated together; run the others one at a time")
    if model.training:
        model.eval()
    if len(requests) > 1 and not model.batches_exactly():
        # without the packed kernels a batch would round a run's rows differently: one at a time
        return [simulate_requests(model, embedder, [r], progress=progress, cancel=cancel)[0] for r in requests]
    runs = [_Run(model, embedder, r) for r in requests]
    steps = range(max(r.tokens for r in requests))
    if progress:
        delay = progress_delay()
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="tokens", unit="tok", leave=False, delay=delay, disable=None)  # None: a terminal only
    for k in steps:
        active = [run for run in runs if not run.done and k < run.req.tokens]
        if not active:
            break
        if cancel is not None and cancel():
            if progress:
                steps.close()
            raise Cancelled(f"cancelled before token {k + 1} of {len(steps)}")
        # the nets and the step's small element-wise work: one thread at a few rows (onednn.serial_if_few)
        with onednn.serial_if_few(sum(run.y.shape[0] for run in active), model.emb_mean.device):
            if active[0].req.solver == "em":
                _em_lockstep(model, active, k)
            else:
                (run,) = active
                run.read_shift(k)
                run.y_new = _sdeint_step(run.sde, run.y, run.times[k], run.times[k + 1], run.bm, run.req.solver,
                                         run.step)
            decode = [run for run in active if run.check(k)]
            rows = [run.decode_rows() for run in decode]  # each run's rows once (the shift added once)
        # the first token starts a word: the prompt is a finished text (docs/design.md §3)
        banned = embedder.continuation_mask.to(model.emb_mean.device) if k == 0 else None
        shared = [i for i, run in enumerate(decode) if run.req.temperature == 0 and rows[i].shape[0] >= 2]
        if shared:
            sizes = [len(rows[i]) for i in shared]
            v, p = model.emission.decode(torch.cat([rows[i] for i in shared]), 0.0, None,
                                         exclude=torch.cat([decode[i].decode_exclude() for i in shared]),
                                         banned=banned)
            for i, v_r, p_r in zip(shared, v.split(sizes), p.split(sizes)):
                decode[i].finish_step(k, v_r, p_r)
        for i, run in enumerate(decode):
            if i not in shared:
                v, p = model.emission.decode(rows[i], run.req.temperature, run.gen, exclude=run.decode_exclude(),
                                             banned=banned)
                run.finish_step(k, v, p)
    if progress:
        steps.close()
    return [run.result() for run in runs]


def _em_lockstep(model: TextSDE, runs: list[_Run], k: int) -> None:
    """One token step of Euler-Maruyama for every run, ``y <- y + f dt + g dW`` on each run's own
    state and grid (torchsde's, :func:`solver_grid`), its increments read from its own Brownian
    path up front. The noisy x and the noiseless memory are updated apart: the same arithmetic as
    on the whole state, whose memory part of ``g dW`` is an exact zero, without building the padded
    noise or the memory's zero diffusion. The nets are evaluated once for all runs of two paths or
    more (:func:`_net_outputs`)."""
    grids = [solver_grid(run.times[k], run.times[k + 1], run.step) for run in runs]
    noise = [run.bm.inner if isinstance(run.bm, StateNoise) else run.bm for run in runs]  # x's coordinates
    dws = [[bm(a, b) for a, b in grid] for bm, grid in zip(noise, grids)]
    ys = [run.y for run in runs]
    for j in range(max(len(g) for g in grids)):
        part = [i for i, g in enumerate(grids) if j < len(g)]
        splits = [model.split(ys[i]) for i in part]
        zs = [model._features(x, h, grids[i][j][0]) for i, (x, h) in zip(part, splits)]
        # the read-out's shift is taken at the token's start, with the drift of its first substep
        names = model.net_names() if j == 0 else ("drift_net", "diffusion_net")
        outs = _net_outputs(model, zs, [runs[i].req.paths for i in part], names)
        for i, (x, h), (drift_out, diff_out, *shift) in zip(part, splits, outs):
            if shift:
                runs[i].shift = shift[0]
            a, b = grids[i][j]
            mu, sigma = model._mu(None, x, drift_out), model._sigma(None, diff_out)
            dt = b - a
            ys[i] = torch.cat([x + mu * dt + (runs[i].sde.scale * sigma) * dws[i][j],
                               h + model.memory_rate(x, h) * dt], dim=-1)
    for run, y in zip(runs, ys):
        run.y_new = y


def _net_outputs(model: TextSDE, zs: list[torch.Tensor], paths: list[int], names: tuple[str, ...]
                 ) -> list[tuple[torch.Tensor, ...]]:
    """The outputs of the nets ``names`` (the drift's and the diffusion's, then the read-out's if
    asked) at each run's bounded inputs: one evaluation for all the runs of two paths or more
    together, one each for runs of a single path."""
    out: list = [None] * len(zs)
    multi = [i for i, n in enumerate(paths) if n >= 2]
    if multi:
        z = torch.cat([zs[i] for i in multi]) if len(multi) > 1 else zs[multi[0]]
        sizes = [zs[i].shape[0] for i in multi]
        per_net = [model._net(name, z).split(sizes) for name in names]
        for i, outs in zip(multi, zip(*per_net)):
            out[i] = outs
    for i, n in enumerate(paths):
        if n < 2:
            out[i] = tuple(model._net(name, zs[i]) for name in names)
    return out


class _Run:
    """One request's run: its state, Brownian path, decoded tokens and record, token by token."""

    def __init__(self, model: TextSDE, embedder: Embedder, req: SampleRequest):
        self.model, self.req = model, req
        self.prompt_ids = check_prompt(embedder, req.prompt)
        dev = model.emb_mean.device
        cfg = model.config
        self.d, paths, tokens = cfg.dim, req.paths, req.tokens
        self.y = model.prompt_state(self.prompt_ids).expand(paths, -1).clone()
        t_start = (len(self.prompt_ids) - 1) * cfg.dt
        self.times = torch.tensor([t_start + k * cfg.dt for k in range(tokens + 1)], dtype=torch.float32,
                                  device=dev)
        self.step = cfg.dt / req.substeps
        self.bm = brownian_path(float(self.times[0]), float(self.times[-1]), paths, self.d, self.step, req.seed,
                                dev, state_dim=cfg.state_dim)
        self.gen = torch.Generator(device=dev).manual_seed(req.seed)
        self.bound = cfg.divergence_radius * float(model.cloud_radius)
        self.ids_out = torch.full((paths, tokens), -1, dtype=torch.long, device=dev)
        self.probs_out = torch.zeros(paths, tokens, device=dev)
        self.rec = None
        if req.record_states:  # x and h after each step; mu and sigma^2 at them come after the loop
            self.rec = {"states": torch.full((paths, tokens + 1, self.d), math.nan, device=dev),
                        "memory": torch.full((paths, tokens + 1, cfg.memory_dim), math.nan, device=dev)}
            self.rec["states"][:, 0], self.rec["memory"][:, 0] = model.split(self.y)
        self.alive = torch.ones(paths, dtype=torch.bool, device=dev)
        self.all_alive = True  # until a path stops: the common case skips the masked updates
        self.last = torch.full((paths,), self.prompt_ids[-1], dtype=torch.long, device=dev)
        self.diverged_at = torch.full((paths,), -1, dtype=torch.long, device=dev)
        self.sde = ScaledSDE(model, req.diffusion_scale)
        self.done = False
        self.y_new: torch.Tensor | None = None
        self.shift: torch.Tensor | None = None  # the read-out's shift for the step's decode

    def check(self, k: int) -> bool:
        """After step ``k``'s integration (``y_new``): stop the paths that left the cloud or became
        non-finite; False when none is left (the run is done)."""
        x = self.y_new[:, :self.d]
        # a row is finite where its sum is (a NaN or an infinity carries into it; finite values that
        # overflow it would be 1e35 each, far past the cloud's bound): one pass, not four
        ok = torch.isfinite(self.y_new.sum(-1)) & (x.norm(dim=-1) <= self.bound)
        if self.all_alive and bool(ok.all()):
            return True
        self.all_alive = False
        newly = self.alive & ~ok
        self.diverged_at[newly] = k
        self.alive &= ok
        if not self.alive.any():
            self.done = True
            return False
        self.y = torch.where(self.alive[:, None], self.y_new, self.y)  # stopped paths keep their last sane state
        return True

    def read_shift(self, k: int) -> None:
        """The read-out's shift at the state before step ``k`` (for the torchsde solvers; ``em`` takes
        it with the nets' first evaluation of the step)."""
        if self.model.has_readout:
            x, h = self.model.split(self.y)
            self.shift = self.model.readout_shift(self.model._features(x, h, self.times[k]))

    def decode_rows(self) -> torch.Tensor:
        """Where the emission reads each live path's token: the new x, plus the read-out's shift
        taken at the step's start (docs/design.md §3)."""
        x = self.y_new[:, :self.d]
        if self.shift is not None:
            x = x + self.shift
        return x if self.all_alive else x[self.alive]

    def decode_exclude(self) -> torch.Tensor:
        # A token never follows itself here: real text almost never does (0.06% of HelpSteer's
        # pairs), while a greedy read-out of a settled path would repeat one token for ever.
        return self.last if self.all_alive else self.last[self.alive]

    def finish_step(self, k: int, v: torch.Tensor, p: torch.Tensor) -> None:
        """Record step ``k``'s decoded tokens ``v`` and probabilities ``p``, then snap."""
        model, rec = self.model, self.rec
        if self.all_alive:
            self.last, self.ids_out[:, k], self.probs_out[:, k] = v, v, p
            if rec is not None:
                rec["states"][:, k + 1], rec["memory"][:, k + 1] = model.split(self.y_new)
            self.y = self.y_new
            if self.req.snap:
                self.y[:, :self.d] = model.token_states(v)
            return
        alive = self.alive
        self.last[alive] = v
        self.ids_out[alive, k], self.probs_out[alive, k] = v, p
        if rec is not None:
            rec["states"][alive, k + 1], rec["memory"][alive, k + 1] = model.split(self.y_new[alive])
        if self.req.snap:
            self.y[alive, :self.d] = model.token_states(v)

    def result(self) -> Paths:
        recorded = {}
        if self.rec is not None:
            self.rec["drift"], self.rec["sigma2"] = _nets_at(self.model, self.rec["states"], self.rec["memory"],
                                                             self.times)
            recorded = {k: v.cpu() for k, v in self.rec.items()}
        return Paths(prompt_ids=self.prompt_ids, token_ids=self.ids_out.cpu(), probs=self.probs_out.cpu(),
                     times=self.times.cpu(), diverged=(self.diverged_at >= 0).cpu(),
                     diverged_at=self.diverged_at.cpu(), diffusion_scale=float(self.req.diffusion_scale), **recorded)


def _nets_at(model: TextSDE, states: torch.Tensor, memory: torch.Tensor, times: torch.Tensor,
             chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """mu(x, h, t) (paths, steps + 1, dim) and sum_d sigma_d^2(x, h, t) (paths, steps + 1) at
    recorded states, NaN where a path had stopped: one batched evaluation of the nets after the
    run, ``chunk`` rows at a time, instead of a small one per step."""
    n_paths, n_times, d = states.shape
    x, h = states.reshape(-1, d), memory.reshape(n_paths * n_times, -1)
    t = times.repeat(n_paths)
    drift = torch.full_like(x, math.nan)
    sigma2 = torch.full((x.shape[0],), math.nan, device=x.device)
    rows = torch.isfinite(x).all(-1).nonzero().squeeze(-1)
    for start in range(0, rows.numel(), chunk):
        r = rows[start:start + chunk]
        mu, sig = model.drift_and_sigma(x[r], h[r], t[r])
        drift[r], sigma2[r] = mu, sig.pow(2).sum(-1)
    return drift.reshape(n_paths, n_times, d), sigma2.reshape(n_paths, n_times)


def _sdeint_step(sde: ScaledSDE, y, t0, t1, bm, solver: str, step: float) -> torch.Tensor:
    ts = torch.stack([t0, t1])
    if solver == "milstein":
        # Milstein needs d(sigma)/dy, which torchsde takes by autograd.
        with torch.enable_grad():
            return torchsde.sdeint(sde, y, ts, bm=bm, method=solver, dt=step)[-1].detach()
    return torchsde.sdeint(sde, y, ts, bm=bm, method=solver, dt=step)[-1]


def path_texts(embedder: Embedder, result: Paths) -> list[dict]:
    """Per path: the continuation's text, its WordPiece tokens and the divergence flag."""
    out = []
    for i in range(result.token_ids.shape[0]):
        ids = result.continuation(i)
        out.append({"text": embedder.decode(ids), "tokens": embedder.tokens(ids),
                    "diverged": bool(result.diverged[i])})
    return out
