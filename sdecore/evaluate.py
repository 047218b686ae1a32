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
from .transitions import Transitions, build_transitions, encode_rows, training_tokens

log = logging.getLogger(__name__)

MODEL_NAMES = ("sde", "unigram", "bigram", "brownian", "ar1", "drift_only")
METRICS = ("token_ppl", "increment_nll", "top1", "top10", "coverage90")
CALIBRATION_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
_BATCH = 1024
_Z90 = float(norm.ppf(0.95))


@dataclass
class GaussianStep:
    """A continuous model's prediction of x_{k+1}: mean (n, dim), var (n, dim) or (dim,)."""

    mean: torch.Tensor
    var: torch.Tensor

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean[idx], self.var[idx] if self.var.ndim == 2 else self.var


@torch.no_grad()
def predict_steps(model: TextSDE, data: Transitions, name: str, fit: Transitions) -> GaussianStep:
    """One-step Gaussian predictions of the continuous models on ``data``, their
    parameters fitted on ``fit`` where they have any.

    sde: N(x + mu dt, sigma^2 dt); drift_only: the learned drift with a constant per-dimension
    variance (maximum likelihood on fit); brownian: N(x, c) with c the mean squared increment
    on fit; ar1: x_{k+1} = x_k A + b + eps, fitted by least squares, with its residual variance.
    """
    dt = model.config.dt
    if name == "brownian":
        return GaussianStep(data.x, (fit.x_next - fit.x).pow(2).mean(0))
    if name == "ar1":
        a, b = _fit_ar1(fit.x, fit.x_next)
        var = (fit.x_next - fit.x @ a - b).pow(2).mean(0)
        return GaussianStep(data.x @ a + b, var)
    means, vars_ = [], []
    for idx in torch.arange(len(data)).split(_BATCH):
        x, h, t = data.x[idx], data.h[idx], data.t[idx]
        means.append(x + model.drift(x, h, t) * dt)
        vars_.append(model.sigma(x, h, t).pow(2) * dt)
    mean = torch.cat(means)
    if name == "sde":
        return GaussianStep(mean, torch.cat(vars_))
    if name == "drift_only":
        fit_mean = predict_steps(model, fit, "sde", fit).mean
        return GaussianStep(mean, (fit.x_next - fit_mean).pow(2).mean(0))
    raise ValueError(f"unknown continuous model {name!r}")


def _fit_ar1(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares ``y ≈ x A + b`` with a small ridge on A: A (dim, dim), b (dim,)."""
    x1 = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1).double()
    gram = x1.T @ x1
    gram[:-1, :-1] += ridge * x.shape[0] * torch.eye(x.shape[1], dtype=torch.float64, device=x.device)
    coef = torch.linalg.solve(gram, x1.T @ y.double()).float()
    return coef[:-1], coef[-1]


def fit_emission(model: TextSDE, pred: GaussianStep, targets: torch.Tensor, log_prior: torch.Tensor, *,
                 steps: int = 30, batch: int = 256, seed: int = 0) -> GaussianEmission:
    """A Gaussian emission (tau, w) fitted by cross-entropy to a model's predictions on its fit
    transitions, the way the SDE's emission is trained (Adam from the SDE's own tau and w,
    which sit near the optimum, so a few dozen full-vocabulary steps suffice)."""
    table = model.emission.table
    emission = GaussianEmission(table, model.emission.support_mask, log_prior).to(table.device)
    emission.load_state_dict({**model.emission.state_dict(), "log_prior": log_prior})
    opt = torch.optim.Adam(emission.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(seed)
    n = targets.shape[0]
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch, n),), generator=gen)
        mean, var = pred.rows(idx)
        loss = torch.nn.functional.cross_entropy(emission.next_token_logits(mean, var), targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return emission.eval()


def _gaussian_stats(pred: GaussianStep, x_next: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per transition: increment NLL per dimension, coverage of the 90% interval, and the
    standardised residuals' absolute values (for calibration)."""
    var = pred.var if pred.var.ndim == 2 else pred.var.expand_as(pred.mean)
    resid = x_next - pred.mean
    z = (resid / var.sqrt()).abs()
    nll = gaussian_nll(resid, var).mean(-1)
    return {"increment_nll": nll.double().cpu(), "coverage90": (z <= _Z90).double().mean(-1).cpu(), "z": z}


@torch.no_grad()
def _emission_stats(emission: GaussianEmission, pred: GaussianStep, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {"nll": [], "top1": [], "top10": []}
    for idx in torch.arange(targets.shape[0]).split(_BATCH):
        mean, var = pred.rows(idx)
        rows = torch.log_softmax(emission.next_token_logits(mean, var), dim=-1)
        for k, v in zip(out, row_stats(rows, targets[idx])):
            out[k].append(v.cpu())
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def _discrete_stats(lm, prev: torch.Tensor, nxt: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {"nll": [], "top1": [], "top10": []}
    for idx in torch.arange(prev.shape[0]).split(_BATCH):
        for k, v in zip(out, row_stats(lm.log_prob_rows(prev[idx]), nxt[idx])):
            out[k].append(v)
    return {k: torch.cat(v) for k, v in out.items()}


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
    computed on the device the checkpoint's model is on."""
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
    eval_seqs, eval_firsts = encode_rows(emb, eval_df, training=False)
    fit_seqs, fit_firsts = encode_rows(emb, fit_df, training=True, include_prompts=include_prompts)
    data = build_transitions(model, eval_seqs, eval_firsts).to(dev)
    fit = build_transitions(model, fit_seqs, fit_firsts).to(dev)
    fit_seqs = training_tokens(fit_seqs, fit_firsts)
    log_prior = unigram_log_prior(fit_seqs, emb.support_mask, model.config.prior_smoothing).to(dev)

    stats: dict[str, dict[str, torch.Tensor]] = {}
    uni = UnigramLM().fit(fit_seqs, emb.support_mask, alpha=0.1)
    stats["unigram"] = _discrete_stats(uni, data.v.cpu(), data.v_next.cpu())
    kn = KneserNeyBigramLM().fit(fit_seqs, emb.support_mask, discount=0.75)
    stats["bigram"] = _discrete_stats(kn, data.v.cpu(), data.v_next.cpu())
    sde_z = None
    for name in ("sde", "brownian", "ar1", "drift_only"):
        pred = predict_steps(model, data, name, fit)
        if name == "sde":
            emission = model.emission
        else:
            emission = fit_emission(model, predict_steps(model, fit, name, fit), fit.v_next, log_prior)
        g = _gaussian_stats(pred, data.x_next)
        stats[name] = {**_emission_stats(emission, pred, data.v_next), "increment_nll": g["increment_nll"],
                       "coverage90": g["coverage90"]}
        if name == "sde":
            sde_z = g["z"]

    report = {"corpus": str(corpus), "split": split, "fit_corpus": str(fit_src), "n_transitions": len(data),
              "models": {name: _summary(stats[name]) for name in MODEL_NAMES},
              "calibration": _calibration(sde_z), "data_credit": DATA_CREDIT}
    if "complexity" in eval_df.columns:
        report["by_complexity"] = _by_group(stats, eval_df["complexity"].to_numpy(), data.seq)
    return report


def _calibration(z: torch.Tensor) -> dict[str, list[float]]:
    """Observed share of dimensions inside the SDE's central intervals, per nominal level."""
    levels = list(CALIBRATION_LEVELS)
    observed = [float((z <= float(norm.ppf(0.5 + lv / 2))).double().mean()) for lv in levels]
    return {"levels": levels, "observed": observed}


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
