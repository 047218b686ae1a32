"""Analysis of a trained text SDE: Lyapunov stability along sample paths, the sweep over
diffusion scales, where the diffusion is large, and a real text's path against the
drift's predictions (docs/design.md §4.1, §4.2). The mathematics lives in :mod:`stability` and :mod:`processes`;
this module evaluates the model and feeds them.

The Lyapunov centre ``x*`` is the vocabulary mean, which is the origin of the
standardised embedding space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .embedding import Embedder
from .metrics import gaussian_nll
from .model import TextSDE
from .simulate import Paths, SampleRequest, simulate_requests
from .stability import Envelope, cloud_radius2, critical_scale, fit_envelope, lyapunov_bound, lyapunov_LV, lyapunov_V


def attractor(model: TextSDE) -> np.ndarray:
    """x*: the vocabulary mean (the origin in standardised coordinates), (dim,)."""
    return np.zeros(model.dim)


def vocabulary_radius2(model: TextSDE, quantile: float = 0.99) -> float:
    """The vocabulary cloud's squared radius around x* (its ``quantile`` of |E_v - x*|^2)."""
    table = model.emission.table[model.emission.support_mask].cpu()
    return cloud_radius2(table, attractor(model), quantile)


@dataclass
class LyapunovCurves:
    """V and LV along recorded paths, the fitted envelope and the bound.

    V, LV: (paths, steps + 1), NaN after divergence; t: (steps + 1,) time since the
    prompt; envelope: LV <= -alpha V + beta on >= 99% of the states; bound: (steps + 1,)
    V(0) e^{-alpha t} + beta/alpha (1 - e^{-alpha t}); mean_V: (steps + 1,) simulated mean.
    """

    V: np.ndarray
    LV: np.ndarray
    t: np.ndarray
    envelope: Envelope
    bound: np.ndarray
    mean_V: np.ndarray


PROBE_FACTORS = (0.25, 0.5, 1.5, 2.0, 3.0)


@torch.no_grad()
def probe_generator(model: TextSDE, paths: Paths, factors=PROBE_FACTORS) -> tuple[np.ndarray, np.ndarray]:
    """(V, LV) at the path states moved radially, x* + f (x - x*), with their memory kept.

    A Lyapunov inequality must hold off the visited states too; one SDE step of length dt
    forgets most of x, so visited states barely spread in V, and a fit on them alone
    cannot see the rate alpha. Returns flat arrays over all probes and states."""
    x_star = torch.as_tensor(attractor(model), dtype=torch.float32)
    ok = torch.isfinite(paths.states).all(-1)
    x, h = paths.states[ok], paths.memory[ok]
    t = paths.times.expand(ok.shape)[ok]
    vs, lvs = [], []
    for f in factors:
        xp = x_star + f * (x - x_star)
        mu = model.drift(xp, h, t)
        s2 = model.sigma(xp, h, t).pow(2).sum(-1)
        vs.append(lyapunov_V(xp[None], x_star)[0])
        lvs.append(lyapunov_LV(xp[None], mu[None], s2[None], x_star, paths.diffusion_scale)[0])
    return np.concatenate(vs), np.concatenate(lvs)


def lyapunov_curves(model: TextSDE, paths: Paths) -> LyapunovCurves:
    """V(x) = |x - x*|^2 and LV = 2 (x - x*).mu + s^2 sum sigma^2 along paths simulated with
    ``record_states=True`` (without snapping, the paths the generator describes). The
    envelope is fitted on the path states and on radial probes around them
    (:func:`probe_generator`)."""
    if paths.states is None:
        raise ValueError("the paths were simulated without record_states=True")
    x_star = attractor(model)
    V = lyapunov_V(paths.states, x_star)
    LV = lyapunov_LV(paths.states, paths.drift, paths.sigma2, x_star, paths.diffusion_scale)
    t = (paths.times - paths.times[0]).numpy().astype(np.float64)
    pv, plv = probe_generator(model, paths)
    env = fit_envelope(np.concatenate([V[np.isfinite(V)], pv]), np.concatenate([LV[np.isfinite(LV)], plv]))
    with np.errstate(invalid="ignore"):
        mean_V = np.nanmean(V, axis=0)
    bound = lyapunov_bound(float(np.nanmean(V[:, 0])), env.alpha, env.beta, t)
    return LyapunovCurves(V=V, LV=LV, t=t, envelope=env, bound=bound, mean_V=mean_V)


@dataclass
class ScaleSweep:
    """The envelope at each diffusion scale and the critical scale.

    scales, alpha, beta, ultimate (= beta/alpha), diverged_share: (n_scales,);
    radius2: the vocabulary cloud's squared radius; critical: the smallest scale whose
    ultimate bound exceeds radius2 (None if none in the sweep) — where text goes off the rails.
    """

    scales: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    ultimate: np.ndarray
    diverged_share: np.ndarray
    radius2: float
    critical: float | None


def stability_sweep(model: TextSDE, embedder: Embedder, prompt: str, scales, *, paths: int = 32, tokens: int = 32,
                    seed: int = 0, solver: str = "em", substeps: int = 1) -> ScaleSweep:
    """Fit ``LV <= -alpha V + beta`` on continuous (unsnapped) paths at each scale.

    The same seed, hence the same Brownian path, is used at every scale. With ``em`` the scales'
    runs are simulated together (:func:`sdecore.simulate.simulate_requests`, each run as alone)."""
    scales = np.asarray(sorted(float(s) for s in scales))
    requests = [SampleRequest(prompt, paths=paths, tokens=tokens, diffusion_scale=float(s), seed=seed, solver=solver,
                              substeps=substeps, snap=False, record_states=True) for s in scales]
    if solver == "em":
        runs = simulate_requests(model, embedder, requests)
    else:
        runs = [simulate_requests(model, embedder, [r])[0] for r in requests]
    alpha, beta, div = [], [], []
    for res in runs:
        env = lyapunov_curves(model, res).envelope
        alpha.append(env.alpha)
        beta.append(env.beta)
        div.append(float(res.diverged.float().mean()))
    alpha, beta = np.asarray(alpha), np.asarray(beta)
    with np.errstate(divide="ignore", invalid="ignore"):
        ultimate = np.where(alpha > 0, beta / np.where(alpha > 0, alpha, 1.0), np.inf)
    r2 = vocabulary_radius2(model)
    return ScaleSweep(scales=scales, alpha=alpha, beta=beta, ultimate=ultimate, diverged_share=np.asarray(div),
                      radius2=r2, critical=critical_scale(scales, ultimate, r2))


@dataclass
class TextTrajectory:
    """A real text's path against the drift's predictions.

    tokens: the L WordPiece tokens; ids: (L,); states: (L, dim) the actual path;
    one_step: (L, dim) x_{k-1} + mu dt from the true prefix (row 0 = states[0]);
    free_run: (L, dim) the drift alone from x_0, no noise, no snapping (memory fed by
    its own predictions); drift_loss, diffusion_loss, nll: (L - 1,) per transition k -> k+1
    (per-dimension MSE of the increment, per-dimension Gaussian NLL, and -log p(next token));
    sigma: (L - 1,) mean sigma over dimensions at each step.
    """

    tokens: list[str]
    ids: np.ndarray
    states: np.ndarray
    one_step: np.ndarray
    free_run: np.ndarray
    drift_loss: np.ndarray
    diffusion_loss: np.ndarray
    nll: np.ndarray
    sigma: np.ndarray


@torch.no_grad()
def text_trajectory(model: TextSDE, embedder: Embedder, text: str, *, max_tokens: int = 512) -> TextTrajectory:
    """Teacher-forced analysis of ``text`` (its first ``max_tokens`` tokens)."""
    ids = embedder.encode(text)[:max_tokens]
    if len(ids) < 2:
        raise ValueError("the text needs at least two tokens to have a path")
    model.eval()
    dev = model.emb_mean.device
    dt = model.config.dt
    idt = torch.as_tensor(ids, device=dev)
    xs = model.token_states(idt)
    hs = model.teacher_forced_memory(xs.unsqueeze(0))[0]
    t = torch.arange(len(ids), device=dev, dtype=torch.float32) * dt
    x, h, xn = xs[:-1], hs[:-1], xs[1:]
    mu, sig, read = model.next_token_mean(x, h, t[:-1])
    resid = xn - x - mu * dt
    drift_l = resid.pow(2).mean(-1)
    var = sig.pow(2) * dt
    diff_l = gaussian_nll(resid, var).mean(-1)
    logits = model.emission.next_token_logits(read, var)
    nll = -torch.log_softmax(logits, -1).gather(-1, idt[1:, None]).squeeze(-1)
    one_step = torch.cat([xs[:1], x + mu * dt])
    free = _free_run(model, xs[0], len(ids), dt)
    def arr(a):
        return (a.detach().cpu().numpy().astype(np.float64))
    return TextTrajectory(tokens=embedder.tokens(ids), ids=np.asarray(ids), states=arr(xs), one_step=arr(one_step),
                          free_run=arr(free), drift_loss=arr(drift_l), diffusion_loss=arr(diff_l), nll=arr(nll),
                          sigma=arr(sig.mean(-1)))


def _free_run(model: TextSDE, x0: torch.Tensor, length: int, dt: float) -> torch.Tensor:
    """The noiseless, unsnapped Euler path of the joint (x, h) system from x0: (length, dim)."""
    y = torch.cat([x0, x0.new_zeros(model.config.memory_dim)]).unsqueeze(0)
    out = [x0]
    for k in range(length - 1):
        y = y + model.f(torch.tensor(k * dt, device=y.device), y) * dt
        out.append(y[0, : model.dim])
    return torch.stack(out)


def sigma_ranking(model: TextSDE, embedder: Embedder, texts: list[str], *, top: int = 20) -> list[dict]:
    """Where the diffusion is large: tokens ranked by the mean sigma of the step that
    leaves them, over the given texts. Each row: token, count, mean_sigma."""
    sums: dict[int, list[float]] = {}
    for text in texts:
        ids = embedder.encode(text)
        if len(ids) < 2:
            continue
        tr = text_trajectory(model, embedder, text)
        for v, s in zip(tr.ids[:-1], tr.sigma):
            sums.setdefault(int(v), []).append(float(s))
    rows = [{"token": embedder.tokens([v])[0], "count": len(s), "mean_sigma": float(np.mean(s))}
            for v, s in sums.items()]
    return sorted(rows, key=lambda r: -r["mean_sigma"])[:top]
