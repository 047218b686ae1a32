"""Held-out metrics of the SDE against baselines (docs/design.md §4.3).

Every model is scored on the same transitions: the adjacent WordPiece pairs inside each
response of the evaluated split. Per model:

- ``token_ppl``, ``top1``, ``top10``: from its next-token distribution. Continuous models
  (the SDE, ``brownian``, ``ar1``, ``drift_only``) predict a Gaussian for the next state,
  ``N(mean, diag(var))``, and read tokens through a Gaussian emission
  ``p(v) ∝ pi_v^w N(E_v; mean, diag(var + tau^2))``. The SDE uses its own trained emission;
  each baseline gets one fitted the same way (``tau`` and ``w`` by cross-entropy on the fit
  corpus's train split), so the perplexities compare dynamics, not decoders.
- ``increment_nll``: Gaussian negative log-likelihood of the next state per dimension (nats).
- ``coverage90``: share of true next states inside the predicted central 90% intervals,
  averaged over dimensions.

Discrete baselines (``unigram`` add-0.1, ``bigram`` interpolated Kneser-Ney) define no
increment density, so their ``increment_nll`` and ``coverage90`` are ``None``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm

from .baselines import KneserNeyBigramLM, UnigramLM, row_stats, unigram_log_prior
from .checkpoint import REPORT, Checkpoint, load_checkpoint, write_json
from .config import DATA_CREDIT, TrainConfig
from .data import load_corpus, split_by_prompt
from .embedding import Embedder
from .emission import GaussianEmission
from .metrics import gaussian_nll, perplexity
from .model import TextSDE
from .tokendata import TokenSequences, WindowBatch, encode_corpus, in_order, window_batch

log = logging.getLogger(__name__)

MODEL_NAMES = ("sde", "unigram", "bigram", "brownian", "ar1", "drift_only")
CONTINUOUS = ("sde", "brownian", "ar1", "drift_only")
BY_TOKEN = ("brownian", "ar1")  # predictions that depend on the current token alone
METRICS = ("token_ppl", "increment_nll", "top1", "top10", "coverage90")
CALIBRATION_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
_BATCH = 1024  # transitions per batch: every pass holds one batch's states and logits at a time
_Z90 = float(norm.ppf(0.95))
_EMISSION_STEPS, _EMISSION_BATCH = 30, 256


@dataclass
class GaussianStep:
    """A continuous model's prediction of x_{k+1}: mean (r, dim), var (r, dim) or (dim,).
    Transition i reads row ``row_of[i]`` (row i without ``row_of``, r = n): a model whose
    prediction depends on the current token alone needs one row per distinct token. ``read`` is
    where its emission reads the next token when that is not ``mean`` (the SDE's read-out,
    docs/design.md §2.4)."""

    mean: torch.Tensor
    var: torch.Tensor
    row_of: torch.Tensor | None = None
    read: torch.Tensor | None = None

    @property
    def read_mean(self) -> torch.Tensor:
        return self.mean if self.read is None else self.read

    def per_transition(self) -> GaussianStep:
        """The same prediction with one row per transition."""
        if self.row_of is None:
            return self
        return GaussianStep(self.mean[self.row_of], self.var[self.row_of] if self.var.ndim == 2 else self.var,
                            read=None if self.read is None else self.read[self.row_of])

    def by_token(self, v: torch.Tensor) -> GaussianStep:
        """One row per distinct current token ``v`` (n,), for a prediction that depends on it
        alone (brownian, ar1): the logits then cost a row per token, not per transition."""
        unique, row_of = torch.unique(v, return_inverse=True)
        first = torch.full((unique.numel(),), v.numel(), dtype=torch.long, device=v.device)
        first.scatter_reduce_(0, row_of, torch.arange(v.numel(), device=v.device), reduce="amin")
        return GaussianStep(self.mean[first], self.var[first] if self.var.ndim == 2 else self.var, row_of,
                            read=None if self.read is None else self.read[first])


@dataclass
class ContinuousFits:
    """The baselines' parameters, fitted on the fit split: brownian's variance, ar1's map
    ``x A + b`` and residual variance, and drift_only's variance around the learned drift."""

    brownian_var: torch.Tensor
    ar1_a: torch.Tensor
    ar1_b: torch.Tensor
    ar1_var: torch.Tensor
    drift_var: torch.Tensor


class _FitStatistics:
    """Running sums over fit transitions from which :class:`ContinuousFits` follows, in float64:
    a pass over any number of batches holds (dim + 1)^2 numbers, not the transitions."""

    def __init__(self, dim: int, device: torch.device):
        f64 = {"dtype": torch.float64, "device": device}
        self.n = 0
        self.sq_increment = torch.zeros(dim, **f64)  # sum (x' - x)^2
        self.sq_drift = torch.zeros(dim, **f64)  # sum (x' - x - mu dt)^2
        self.gram = torch.zeros(dim + 1, dim + 1, **f64)  # X1^T X1, X1 = [x, 1]
        self.cross = torch.zeros(dim + 1, dim, **f64)  # X1^T x'
        self.sq_next = torch.zeros(dim, **f64)  # sum x'^2

    def add(self, x: torch.Tensor, x_next: torch.Tensor, mean_sde: torch.Tensor) -> None:
        x1 = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1).double()
        y = x_next.double()
        self.n += x.shape[0]
        self.sq_increment += (y - x.double()).pow(2).sum(0)
        self.sq_drift += (y - mean_sde.double()).pow(2).sum(0)
        self.gram += x1.T @ x1
        self.cross += x1.T @ y
        self.sq_next += y.pow(2).sum(0)

    def result(self, ridge: float = 1e-3) -> ContinuousFits:
        """ar1 by least squares with a small ridge on A (not on b); its residual variance per
        dimension from the same sums, ``|y - X1 c|^2 = y.y - 2 c.(X1^T y) + c.(X1^T X1 c)``."""
        dim = self.sq_next.numel()
        gram = self.gram.clone()
        gram[:-1, :-1] += ridge * self.n * torch.eye(dim, dtype=torch.float64, device=gram.device)
        coef = torch.linalg.solve(gram, self.cross)  # (dim + 1, dim)
        rss = self.sq_next - 2 * (coef * self.cross).sum(0) + (coef * (self.gram @ coef)).sum(0)
        return ContinuousFits(brownian_var=(self.sq_increment / self.n).float(), ar1_a=coef[:-1].float(),
                              ar1_b=coef[-1].float(), ar1_var=(rss.clamp_min(0) / self.n).float(),
                              drift_var=(self.sq_drift / self.n).float())


@torch.no_grad()
def fit_continuous(model: TextSDE, batches: Iterable[WindowBatch]) -> ContinuousFits:
    """The continuous baselines' parameters from one pass over fit transitions (any iterable
    of batches with ``x``, ``h``, ``t``, ``x_next``): brownian, N(x, c) with c the mean squared
    increment; ar1, x_{k+1} = x_k A + b + eps by least squares, with its residual variance;
    drift_only, the learned drift with the maximum-likelihood constant variance."""
    acc = _FitStatistics(model.dim, model.emb_mean.device)
    for b in batches:
        acc.add(b.x, b.x_next, b.x + model.drift(b.x, b.h, b.t) * model.config.dt)
    if acc.n == 0:
        raise ValueError("the fit split has no transitions")
    return acc.result()


@torch.no_grad()
def predict_step(model: TextSDE, batch: WindowBatch, name: str, fits: ContinuousFits) -> GaussianStep:
    """A continuous model's one-step Gaussian prediction on ``batch``: sde, N(x + mu dt,
    sigma^2 dt); drift_only, the learned drift with a constant variance; brownian, N(x, c);
    ar1, N(x A + b, residual variance)."""
    x, h, t, dt = batch.x, batch.h, batch.t, model.config.dt
    if name == "brownian":
        return GaussianStep(x, fits.brownian_var)
    if name == "ar1":
        return GaussianStep(torch.addmm(fits.ar1_b, x, fits.ar1_a), fits.ar1_var)
    if name == "sde":
        mu, sigma, read = model.next_token_mean(x, h, t)
        return GaussianStep(x + mu * dt, sigma.pow(2) * dt, read=read if model.has_readout else None)
    if name == "drift_only":
        return GaussianStep(x + model.drift(x, h, t) * dt, fits.drift_var)
    raise ValueError(f"unknown continuous model {name!r}")


def emission_draws(n: int, *, steps: int = _EMISSION_STEPS, batch: int = _EMISSION_BATCH, seed: int = 0
                   ) -> list[torch.Tensor]:
    """The fit transitions each step of an emission fit reads: ``steps`` seeded draws of
    ``batch`` numbers in [0, n)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, n, (min(batch, n),), generator=gen) for _ in range(steps)]


def fit_emission(model: TextSDE, pred: GaussianStep, targets: torch.Tensor, log_prior: torch.Tensor,
                 draws: list[torch.Tensor]) -> GaussianEmission:
    """A Gaussian emission (tau, w) fitted by cross-entropy to a model's predictions ``pred``
    on fit transitions, the way the SDE's emission is trained: one Adam step per draw (rows of
    ``pred`` and ``targets``), from the SDE's own tau and w, which sit near the optimum, so a
    few dozen full-vocabulary steps suffice."""
    table = model.emission.table
    emission = GaussianEmission(table, model.emission.support_mask, log_prior).to(table.device)
    emission.load_state_dict({**model.emission.state_dict(), "log_prior": log_prior})
    opt = torch.optim.Adam(emission.parameters(), lr=0.05)
    for idx in draws:
        idx = idx.to(targets.device)
        rows = idx if pred.row_of is None else pred.row_of[idx]
        used, row_of = torch.unique(rows, return_inverse=True)  # each distinct row's logits once
        var = pred.var[used] if pred.var.ndim == 2 else pred.var
        logp = torch.log_softmax(emission.next_token_logits(pred.read_mean[used], var), dim=-1)
        loss = -logp[row_of, targets[idx]].mean()  # the cross-entropy of the drawn transitions
        opt.zero_grad()
        loss.backward()
        opt.step()
    return emission.eval()


@torch.no_grad()
def _sampled_rows(model: TextSDE, data: TokenSequences, index: torch.Tensor) -> WindowBatch:
    """The fit transitions numbered ``index`` (in sequence order), built from token ids."""
    parts = [window_batch(model, data, data.positions(chunk)) for chunk in index.split(_BATCH)]
    return WindowBatch(**{f: torch.cat([getattr(p, f) for p in parts])
                          for f in ("x", "h", "t", "x_next", "v_next", "v")})


def _fit_emissions(model: TextSDE, fit_data: TokenSequences, fits: ContinuousFits, log_prior: torch.Tensor
                   ) -> dict[str, GaussianEmission]:
    """An emission per continuous baseline, each fitted on the same seeded draws of fit
    transitions; only the drawn transitions are built."""
    draws = emission_draws(fit_data.n_transitions)
    unique, inverse = torch.unique(torch.cat(draws), return_inverse=True)
    rows = _sampled_rows(model, fit_data, unique)
    local = list(inverse.split([len(d) for d in draws]))
    out = {"sde": model.emission}
    for name in ("brownian", "ar1", "drift_only"):
        pred = predict_step(model, rows, name, fits)
        if name in BY_TOKEN:
            pred = pred.by_token(rows.v)
        out[name] = fit_emission(model, pred, rows.v_next, log_prior, local)
    return out


def _gaussian_stats(pred: GaussianStep, x_next: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per transition: increment NLL per dimension, coverage of the 90% interval, and the
    standardised residuals' absolute values (for calibration)."""
    pred = pred.per_transition()
    var = pred.var if pred.var.ndim == 2 else pred.var.expand_as(pred.mean)
    resid = x_next - pred.mean
    z = (resid / var.sqrt()).abs()
    nll = gaussian_nll(resid, var).mean(-1)
    return {"increment_nll": nll.double().cpu(), "coverage90": (z <= _Z90).double().mean(-1).cpu(), "z": z}


@torch.no_grad()
def _score(model: TextSDE, eval_data: TokenSequences, fits: ContinuousFits, emissions: dict[str, GaussianEmission],
           discrete: dict[str, UnigramLM | KneserNeyBigramLM]) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """One pass over the evaluated transitions, every model on each batch: per model and
    transition the token NLL, top-1/top-10 hits and, for continuous models, the increment NLL
    and 90% coverage; the count of the SDE's standardised residuals inside each calibration
    level's interval; and each transition's sequence."""
    parts: dict[str, dict[str, list]] = {m: {} for m in MODEL_NAMES}
    thresholds = torch.tensor([float(norm.ppf(0.5 + lv / 2)) for lv in CALIBRATION_LEVELS],
                              device=model.emb_mean.device)
    inside = torch.zeros(len(CALIBRATION_LEVELS), dtype=torch.float64, device=thresholds.device)
    seqs = []

    def keep(name, **values):
        for k, v in values.items():
            parts[name].setdefault(k, []).append(v.cpu())

    for b in in_order(model, eval_data, per_batch=_BATCH):
        seqs.append(b.seq.cpu())
        prev, nxt = b.v.cpu(), b.v_next.cpu()
        for name, lm in discrete.items():
            nll, top1, top10 = row_stats(lm.log_prob_rows(prev), nxt)
            keep(name, nll=nll, top1=top1, top10=top10)
        for name in CONTINUOUS:
            pred = predict_step(model, b, name, fits)
            shared = pred.by_token(b.v) if name in BY_TOKEN else pred
            logits = emissions[name].next_token_logits(shared.read_mean, shared.var)
            nll, top1, top10 = row_stats(logits, b.v_next, normalised=False, row_of=shared.row_of)
            del logits
            g = _gaussian_stats(pred, b.x_next)
            keep(name, nll=nll, top1=top1, top10=top10, increment_nll=g["increment_nll"], coverage90=g["coverage90"])
            if name == "sde":
                inside += (g["z"].unsqueeze(-1) <= thresholds).sum((0, 1)).double()
    stats = {m: {k: torch.cat(v) for k, v in d.items()} for m, d in parts.items()}
    seq = torch.cat(seqs)
    return stats, inside.cpu() / (len(seq) * model.dim), seq


def _summary(stats: dict[str, torch.Tensor], mask: torch.Tensor | None = None) -> dict[str, float | None]:
    def pick(a):
        return (a if mask is None else a[mask])
    nll = float(pick(stats["nll"]).mean())
    out = dict.fromkeys(METRICS)
    out["token_ppl"] = perplexity(nll)
    for k in ("top1", "top10"):
        out[k] = float(pick(stats[k]).double().mean())
    for k in ("increment_nll", "coverage90"):
        if k in stats:
            out[k] = float(pick(stats[k]).mean())
    return out


def write_report(folder: str | Path, corpus: str | Path, *, max_rows: int | None = None,
                 embedder: Embedder | None = None, device: str | torch.device = "cpu") -> dict:
    """Evaluate the checkpoint in ``folder`` on the validation split of ``corpus`` (the one it
    was trained on) and write ``folder/report.json``, which the dashboard reads. The step that
    follows training, for the command line and the dashboard alike; returns the report."""
    from .runtime import resolve_device

    ckpt = load_checkpoint(folder, device=resolve_device(str(device)), embedder=embedder)
    report = evaluate_checkpoint(ckpt, corpus, split="validation", max_rows=max_rows)
    write_json(ckpt.folder / REPORT, report)
    return report


def evaluate_checkpoint(ckpt: Checkpoint, corpus: str | Path, *, split: str = "validation",
                        fit_corpus: str | Path | None = None, max_rows: int | None = None) -> dict:
    """The ``evaluate`` report of a checkpoint on ``corpus`` (see the module docstring),
    computed on the device the checkpoint's model is on, in batches: the corpora are held as
    token ids and every state is built per batch (docs/design.md §4.3), so memory does not
    grow with the corpus beyond four bytes a token and a few numbers a transition."""
    if split not in ("validation", "all"):
        raise ValueError(f"--split must be validation or all, got {split!r}")
    model, emb = ckpt.model.eval(), ckpt.embedder
    dev = model.emb_mean.device
    val_fraction = ckpt.history.get("train_config", {}).get("val_fraction", TrainConfig.val_fraction)
    eval_df = load_corpus(corpus, max_rows)
    if split == "validation":
        eval_df = split_by_prompt(eval_df, val_fraction).validation
        if eval_df.empty:
            raise ValueError(f"corpus {corpus} has no validation prompts; use --split all")
    fit_src = fit_corpus if fit_corpus is not None else corpus
    fit_df = split_by_prompt(load_corpus(fit_src, max_rows), val_fraction).train
    if fit_df.empty:
        raise ValueError(f"the fit corpus {fit_src} has no train rows (it needs two or more prompts); "
                         "name another with --fit-corpus")

    include_prompts = ckpt.history.get("train_config", {}).get("include_prompts", True)
    eval_data = encode_corpus(emb, eval_df, training=False)
    fit_data = encode_corpus(emb, fit_df, training=True, include_prompts=include_prompts)
    if not eval_data.n_transitions or not fit_data.n_transitions:
        raise ValueError("no response has two or more tokens: there are no transitions")
    complexity = eval_df["complexity"].to_numpy() if "complexity" in eval_df.columns else None
    del eval_df, fit_df
    log_prior = unigram_log_prior(fit_data, emb.support_mask, model.config.prior_smoothing).to(dev)
    discrete = {"unigram": UnigramLM().fit(fit_data, emb.support_mask, alpha=0.1),
                "bigram": KneserNeyBigramLM().fit(fit_data, emb.support_mask, discount=0.75)}
    fits = fit_continuous(model, in_order(model, fit_data, per_batch=_BATCH))
    emissions = _fit_emissions(model, fit_data, fits, log_prior)
    stats, calibration, seq = _score(model, eval_data, fits, emissions, discrete)

    report = {"corpus": str(corpus), "split": split, "fit_corpus": str(fit_src), "n_transitions": len(seq),
              "models": {name: _summary(stats[name]) for name in MODEL_NAMES},
              "calibration": {"levels": list(CALIBRATION_LEVELS), "observed": calibration.tolist()},
              "data_credit": DATA_CREDIT}
    if complexity is not None:
        report["by_complexity"] = _by_group(stats, complexity, seq)
    return report


def _by_group(stats: dict, values: np.ndarray, seq: torch.Tensor) -> dict[str, dict]:
    per_transition = torch.as_tensor(np.asarray(values)[seq.cpu().numpy()].astype(np.float64))
    out = {}
    for v in sorted(set(per_transition.tolist())):
        if math.isnan(v):
            continue
        mask = per_transition == v
        out[str(int(v))] = {"n_transitions": int(mask.sum()),
                            "models": {name: _summary(stats[name], mask) for name in MODEL_NAMES}}
    return out


def format_report(report: dict) -> str:
    """A plain-text table of an evaluate report."""
    def fmt(v, p):
        return ("-" if v is None else (f"{v:.{p}f}" if math.isfinite(v) else "inf"))
    lines = [f"corpus {report['corpus']} ({report['split']} split, baselines fitted on {report['fit_corpus']}): "
             f"{report['n_transitions']} transitions",
             f"{'model':<11}{'token_ppl':>11}{'incr_nll':>10}{'top1':>8}{'top10':>8}{'cov90':>8}"]
    for name, m in report["models"].items():
        lines.append(f"{name:<11}{fmt(m['token_ppl'], 1):>11}{fmt(m['increment_nll'], 3):>10}"
                     f"{fmt(m['top1'], 3):>8}{fmt(m['top10'], 3):>8}{fmt(m['coverage90'], 3):>8}")
    for level, groups in (("complexity", report.get("by_complexity", {})),):
        for value, g in groups.items():
            ppl = "  ".join(f"{n}={fmt(m['token_ppl'], 0)}" for n, m in g["models"].items())
            lines.append(f"{level} {value} ({g['n_transitions']} transitions): token_ppl {ppl}")
    return "\n".join(lines)
