"""Training: teacher forcing on the Euler-Maruyama transition density, on CPU, GPU or
several processes through ``torchrun`` (PyTorch DDP); docs/design.md §2.5.

Every epoch logs the drift, diffusion, emission cross-entropy and total losses on the
train and validation splits (split by prompt), keeps the best epoch by validation total
in ``weights.safetensors`` and the last epoch with its optimizer in
``train_state.safetensors`` for ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint as ckio
from . import losses
from .baselines import unigram_log_prior
from .config import ModelConfig, TrainConfig
from .data import load_corpus, split_by_prompt
from .embedding import Embedder
from .metrics import perplexity
from .model import TextSDE
from .runtime import Dist, init_distributed, resolve_device, shutdown_distributed
from .tokendata import TokenSequences, WindowBatch, batches, encode_corpus, in_order, window_batch

log = logging.getLogger(__name__)
LOSS_NAMES = ("drift", "diffusion", "ce", "total")
MAX_NONFINITE_RUN = 20  # steps in a row with a non-finite loss or gradient before training stops
_EVAL_BATCH = 1024
# training settings that define the objective, which a resumed run keeps (a history from before
# a setting existed is not checked for it)
RESUME_FIXED = ("drift_weight", "diffusion_weight", "ce_weight", "ce_fraction", "ce_trains_drift",
                "perturb_fraction", "perturb_max")


def weighted_loss(parts: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
    """The training objective: ``drift + diffusion + ce_weight * cross-entropy`` with ``cfg``'s
    weights (docs/design.md §2.5)."""
    return losses.total_loss(parts, drift_weight=cfg.drift_weight, diffusion_weight=cfg.diffusion_weight,
                             ce_weight=cfg.ce_weight)


def _in_order(model: TextSDE, data: TokenSequences) -> Iterator[WindowBatch]:
    """Every transition of ``data`` once, in sequence order, in batches of about _EVAL_BATCH
    (in wide windows whatever the training window: the values are the same, and a wide
    window reads each prefix once for many positions)."""
    return in_order(model, data, per_batch=_EVAL_BATCH)


@torch.no_grad()
def evaluate_losses(model: TextSDE, data: TokenSequences, cfg: TrainConfig) -> dict[str, float]:
    """Mean losses over all transitions (cross-entropy on every position), in eval mode, on the
    model's device."""
    was_training = model.training
    model.eval()
    sums = dict.fromkeys(("drift", "diffusion", "ce"), 0.0)
    n = 0
    for batch in _in_order(model, data):
        parts = model(*batch.as_tuple())
        for k in sums:
            sums[k] += float(parts[k]) * len(batch)
        n += len(batch)
    model.train(was_training)
    out = {k: v / n for k, v in sums.items()}
    out["total"] = float(weighted_loss({k: torch.tensor(v) for k, v in out.items()}, cfg))
    out["token_ppl"] = perplexity(out["ce"])
    return out


@torch.no_grad()
def reference_losses(model: TextSDE, train: TokenSequences, val: TokenSequences, cfg: TrainConfig
                     ) -> dict[str, float]:
    """What the learned nets must beat, on the validation split:
    the drift loss of a zero drift, and the diffusion loss of a constant per-dimension
    sigma fitted by maximum likelihood to the learned drift's residuals on the train split."""
    model.eval()
    dt = model.config.dt
    sq = torch.zeros(model.dim, dtype=torch.float64, device=model.emb_mean.device)
    n_train = 0
    for b in _in_order(model, train):
        sq += (b.x_next - b.x - model.drift(b.x, b.h, b.t) * dt).pow(2).sum(0).double()
        n_train += len(b)
    sigma_c = (sq / n_train / dt).sqrt().float()
    zero, const, n = 0.0, 0.0, 0
    for b in _in_order(model, val):
        mu = model.drift(b.x, b.h, b.t)
        zero += float(losses.drift_loss(b.x, b.x_next, torch.zeros_like(mu), dt)) * len(b)
        const += float(losses.diffusion_loss(b.x, b.x_next, mu, sigma_c, dt)) * len(b)
        n += len(b)
    return {"drift_zero_drift": zero / n, "diffusion_constant_sigma": const / n}


def _optimizer(model: TextSDE, cfg: TrainConfig) -> torch.optim.Optimizer:
    nets = [p for n, p in model.named_parameters() if not n.startswith("emission.")]
    return torch.optim.AdamW([
        {"params": nets, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": list(model.emission.parameters()), "lr": cfg.emission_lr, "weight_decay": 0.0},
    ])


def _save_train_state(path: Path, model: TextSDE, opt: torch.optim.Optimizer, epoch: int) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"optim.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    meta = {"epoch": str(epoch), "param_groups": json.dumps(sd["param_groups"])}
    ckio.write_tensors(path, tensors, metadata=meta)


def _load_train_state(path: Path, model: TextSDE, opt: torch.optim.Optimizer) -> int:
    from safetensors import safe_open

    tensors = ckio.read_tensors(path)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    return int(meta["epoch"])


def _has_checkpoint(out: Path) -> bool:
    """A trained model is there: weights from at least one epoch. A ``config.json`` alone is what a
    run that failed before its first epoch left, and does not stop a new run."""
    return (out / ckio.WEIGHTS).exists()


def _check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; name a folder for the checkpoint")
    has_ckpt = _has_checkpoint(out)
    if resume:
        if not (out / ckio.TRAIN_STATE).is_file():
            raise FileNotFoundError(f"cannot resume: {out / ckio.TRAIN_STATE} does not exist; train without --resume")
    elif has_ckpt and not overwrite:
        raise ValueError(f"{out} already holds a checkpoint; pass --resume to continue it or --overwrite to replace it")


def train_model(
    corpus: str | Path,
    out: str | Path,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    *,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train a text SDE on ``corpus`` and write the checkpoint folder ``out``.

    Returns the history (also written to ``out/history.json``). ``on_epoch`` is called
    with each epoch's record, for live progress displays. Training writes the checkpoint
    (and the reference map, if ``train_config.map`` asks for one); the held-out report
    against baselines is a separate step, :func:`sdecore.evaluate.write_report`
    (docs/design.md §2.5).
    """
    out = Path(out)
    tcfg = (train_config or TrainConfig()).validate()
    _check_out_dir(out, resume, overwrite)
    if tcfg.map == "umap":  # fail before training, not after it
        from .refmap import require_umap

        require_umap()
    dev = resolve_device(device)
    # --overwrite of an existing checkpoint trains into a hidden sibling folder and swaps it in
    # once it is complete, so a run killed at any moment leaves the old model or the new one.
    replacing = overwrite and not resume and _has_checkpoint(out)
    if replacing:
        out = out.resolve()  # the real folder, so `--out .` or a link swaps what it names
    work = ckio.staging_folder(out) if replacing else out
    dist_info, dev = init_distributed(dev)
    try:
        if replacing and dist_info.is_main:
            ckio.move_user_files(work, out)  # a killed earlier swap may have left a user's files there
            shutil.rmtree(work, ignore_errors=True)
        dist_info.barrier()
        history = _train(corpus, work, model_config, tcfg, dev=dev, dist_info=dist_info,
                         resume=resume, progress=progress, on_epoch=on_epoch)
        if replacing and dist_info.is_main:
            ckio.swap_in(work, out)
        dist_info.barrier()
        return history
    finally:
        shutdown_distributed(dist_info)


def corpus_fingerprint(df) -> str:
    """SHA-256 (first 16 hex digits) of a loaded corpus's prompts and responses, in order: what
    ``--resume`` checks it continues on."""
    digest = hashlib.sha256()
    for prompt, response in zip(df["prompt"], df["response"]):
        for text in (prompt, response):
            data = text.encode("utf-8")
            digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()[:16]


def _check_resume(history: dict, saved_model: ModelConfig, asked_model: ModelConfig | None, tcfg: TrainConfig,
                  fingerprint: str, out: Path) -> None:
    """Refuse to resume on other data or another model than the run started with, in one line."""
    started = history.get("train_config", {})
    if started.get("max_rows", tcfg.max_rows) != tcfg.max_rows:
        raise ValueError(f"cannot resume {out}: it started with --max-rows {started.get('max_rows')}, "
                         f"not {tcfg.max_rows}")
    if started.get("val_fraction", tcfg.val_fraction) != tcfg.val_fraction:
        raise ValueError(f"cannot resume {out}: it started with val_fraction {started.get('val_fraction')}, "
                         f"not {tcfg.val_fraction}")
    asked = tcfg.to_dict()
    changed = [k for k in RESUME_FIXED if started.get(k, asked[k]) != asked[k]]
    if changed:  # the objective would change half-way
        raise ValueError(f"cannot resume {out}: it started with " + ", ".join(f"{k} {started[k]}" for k in changed)
                         + "; resume with the same training objective")
    if history.get("corpus_fingerprint", fingerprint) != fingerprint:
        raise ValueError(f"cannot resume {out}: the corpus differs from the one it started on "
                         f"({history.get('corpus')}); resume on that corpus or train anew with --overwrite")
    if asked_model is not None:
        asked = ModelConfig.from_dict({**asked_model.to_dict(), "dim": saved_model.dim}).to_dict()
        diff = [k for k, v in saved_model.to_dict().items() if asked.get(k) != v]
        if diff:
            raise ValueError(f"cannot resume {out}: the model configuration differs in {', '.join(diff)}")


def _train(corpus, out: Path, asked_model: ModelConfig | None, tcfg: TrainConfig, *, dev: torch.device,
           dist_info: Dist, resume: bool, progress: bool, on_epoch) -> dict:
    mcfg = asked_model or ModelConfig()
    if resume:
        saved = ckio.read_json(out / ckio.CONFIG)
        mcfg = ModelConfig.from_dict(saved["model"])
        history = ckio.read_json(out / ckio.HISTORY)
    df = load_corpus(corpus, tcfg.max_rows)
    fingerprint = corpus_fingerprint(df)
    if resume:
        _check_resume(history, mcfg, asked_model, tcfg, fingerprint, out)
    split = split_by_prompt(df, tcfg.val_fraction)
    if split.validation.empty or split.train.empty:
        raise ValueError(f"corpus {corpus} needs responses to at least two distinct prompts "
                         "(train and validation are split by prompt)")
    embedder = Embedder.from_name(mcfg.embedder)
    mcfg.dim = embedder.dim
    torch.manual_seed(tcfg.seed)
    # Token ids only: states and memory are built per batch on the device (tokendata).
    train_data = encode_corpus(embedder, split.train, training=True, include_prompts=tcfg.include_prompts)
    val_data = encode_corpus(embedder, split.validation, training=False)
    log_prior = unigram_log_prior(train_data, embedder.support_mask, mcfg.prior_smoothing)
    model = TextSDE(mcfg, embedder, log_prior)
    prompt_counts = {"train_prompts": int(split.train["prompt"].nunique()),
                     "val_prompts": int(split.validation["prompt"].nunique())}
    map_prompts = list(dict.fromkeys(split.train["prompt"]))[:16]  # all the reference map reads
    del df, split  # from here on the corpus is token ids only
    if not train_data.n_transitions or not val_data.n_transitions:
        raise ValueError("no response has two or more tokens: there are no transitions")
    model.to(dev)
    opt = _optimizer(model, tcfg)
    start_epoch = 0
    if resume:
        start_epoch = _load_train_state(out / ckio.TRAIN_STATE, model, opt)
        if start_epoch >= tcfg.epochs:
            raise ValueError(f"{out} has already trained {start_epoch} epoch{'s' if start_epoch != 1 else ''}; "
                             "ask for more with --epochs")
    else:
        history = {
            "corpus": str(corpus), "corpus_fingerprint": fingerprint, "train_config": tcfg.to_dict(),
            "n_train_transitions": train_data.n_transitions, "n_val_transitions": val_data.n_transitions,
            **prompt_counts, "epochs": [],
        }
        if dist_info.is_main:
            # Everything derived from an earlier model goes, so nothing stale is shown beside the new one.
            for name in ckio.DERIVED:
                (out / name).unlink(missing_ok=True)
            ckio.write_json(out / ckio.CONFIG, ckio.checkpoint_config(mcfg, embedder))
    log.info("training on %d transitions (%d validation) on %s, world size %d",
             train_data.n_transitions, val_data.n_transitions, dev, dist_info.world)

    # The buffers (embedding table, standardisation) are constants: no need to broadcast them.
    net = DistributedDataParallel(model, forward_sync_buffers=False) if dist_info.enabled else model
    best = min((e["validation"]["total"] for e in history["epochs"]), default=math.inf)
    epochs = range(start_epoch, tcfg.epochs)
    from tqdm.auto import tqdm

    bar = tqdm(epochs, desc="epochs", disable=not (progress and dist_info.is_main), initial=start_epoch,
               total=tcfg.epochs)
    for epoch in bar:
        t0 = time.time()
        train_losses, skipped = _train_epoch(net, model, train_data, tcfg, opt, dev=dev, dist_info=dist_info,
                                             epoch=epoch, progress=progress)
        val_losses = evaluate_losses(model, val_data, tcfg)
        record = {"epoch": epoch + 1, "train": train_losses, "validation": val_losses,
                  "seconds": round(time.time() - t0, 2), "skipped_steps": skipped}
        history["epochs"].append(record)
        if dist_info.is_main:
            if val_losses["total"] < best:
                best = val_losses["total"]
                ckio.write_tensors(out / ckio.WEIGHTS, model.state_dict(), dtype=torch.float16)
            _save_train_state(out / ckio.TRAIN_STATE, model, opt, epoch + 1)
            ckio.write_json(out / ckio.HISTORY, history)
        bar.set_postfix(val_total=f"{val_losses['total']:.3f}", val_ppl=f"{val_losses['token_ppl']:.0f}")
        log.info("epoch %d: train %s | validation %s", epoch + 1, _fmt(train_losses), _fmt(val_losses))
        if on_epoch is not None:
            on_epoch(record)
    dist_info.barrier()

    if dist_info.is_main:
        _finish(out, model, history, train_data, val_data, tcfg)
        if tcfg.map != "none":
            from .refmap import fit_reference_map

            fit_reference_map(model.cpu(), embedder, train_data.counted_tokens(), map_prompts, kind=tcfg.map,
                              seed=tcfg.seed).save(out)
    dist_info.barrier()
    return history


def _train_epoch(net, model: TextSDE, data: TokenSequences, cfg: TrainConfig, opt, *, dev, dist_info: Dist,
                 epoch: int, progress: bool) -> tuple[dict[str, float], int]:
    """One pass over the train windows, shuffled by seed and epoch (each rank its own share
    under torchrun); returns mean losses over the steps taken and the number of steps skipped
    for a non-finite loss or gradient."""
    from tqdm.auto import tqdm

    model.train()
    # Seeding by epoch makes the order (and dropout) reproducible and --resume exact.
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    torch.manual_seed(cfg.seed * 100_003 + epoch)
    # every rank takes the same number of batches, or DDP would hang
    groups = list(batches(data.windows(cfg.window), max(1, cfg.batch_size // cfg.window), generator=gen,
                          rank=dist_info.rank, world=dist_info.world))
    # the losses summed on the device, read once at the end: no host round trip per step
    sums = torch.zeros(4, dtype=torch.float64, device=dev)
    count = skipped = run = 0
    steps_per_epoch = len(groups)
    amp = {"device_type": dev.type, "dtype": torch.bfloat16, "enabled": cfg.precision == "bf16"}
    for i, windows in enumerate(tqdm(groups, desc=f"epoch {epoch + 1}", leave=False,
                                     disable=not (progress and dist_info.is_main))):
        _set_lr(opt, cfg, (epoch * steps_per_epoch + i) / (cfg.epochs * steps_per_epoch))
        with torch.no_grad():
            batch = window_batch(model, data, windows)
        ce_mask = torch.rand(len(batch), generator=gen) < cfg.ce_fraction
        ce_mask[0] = True
        with torch.autocast(**amp):
            parts = net(*batch.as_tuple(), ce_mask.to(dev), _perturb(batch.x, cfg, gen), cfg.ce_trains_drift)
            loss = weighted_loss(parts, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        # Skip a step whose loss or gradient is not finite; the flag is agreed across ranks (a
        # NaN anywhere already reaches every rank through the averaged gradient, an infinite loss
        # with finite gradients need not), so all ranks skip the same steps. One host sync a
        # step, as a gradient scaler makes.
        finite = (torch.isfinite(norm) & torch.isfinite(loss.detach())).to(torch.int32)
        if dist_info.enabled:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if not bool(finite):
            skipped += 1
            run += 1
            if run >= MAX_NONFINITE_RUN:
                raise ValueError(f"training stopped at epoch {epoch + 1}: {run} steps in a row had a non-finite loss "
                                 "or gradient; lower the learning rate or check the corpus")
            continue
        run = 0
        opt.step()
        sums += torch.stack([parts["drift"], parts["diffusion"], parts["ce"], loss]).detach().double() * len(batch)
        count += len(batch)
    if count == 0:
        raise ValueError(f"training stopped at epoch {epoch + 1}: every step had a non-finite loss or gradient; "
                         "lower the learning rate or check the corpus")
    return dict(zip(("drift", "diffusion", "ce", "total"), (sums / count).tolist())), skipped


def _perturb(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor | None:
    """x with Gaussian noise of a random size in [0, perturb_max] on a share of the rows."""
    if cfg.perturb_fraction <= 0:
        return None
    n = x.shape[0]
    size = torch.rand(n, 1, generator=gen) * cfg.perturb_max * (torch.rand(n, 1, generator=gen) < cfg.perturb_fraction)
    noise = torch.randn(x.shape, generator=gen) * size
    return x + noise.to(x.device)


def _set_lr(opt: torch.optim.Optimizer, cfg: TrainConfig, progress: float) -> None:
    """Linear warm-up over the first 3% of steps, then cosine decay to 5% of the base rate;
    a function of the step alone, so --resume continues the same schedule."""
    warm = min(1.0, progress / 0.03)
    factor = warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
    for group, base in zip(opt.param_groups, (cfg.lr, cfg.emission_lr)):
        group["lr"] = base * factor


def _finish(out: Path, model: TextSDE, history: dict, train_data: TokenSequences, val_data: TokenSequences,
            cfg: TrainConfig) -> None:
    """Reload the best epoch and write the history with its reference losses."""
    model.load_state_dict(ckio.read_tensors(out / ckio.WEIGHTS))
    best = min(history["epochs"], key=lambda e: e["validation"]["total"])
    history["best_epoch"] = best["epoch"]
    history["best_validation"] = best["validation"]
    history["references"] = reference_losses(model, train_data, val_data, cfg)
    ckio.write_json(out / ckio.HISTORY, history)


def _fmt(d: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in d.items() if k in LOSS_NAMES)
