"""Lyapunov stability of the text SDE (docs/design.md §4.1).

For ``dX = mu dt + s sigma dW`` (diagonal noise) and ``V(x) = |x - x*|^2`` the generator is

    LV = 2 (x - x*) . mu + s^2 * sum_d sigma_d^2

If ``LV <= -alpha V + beta`` with ``alpha > 0``, Dynkin's formula and Gronwall's inequality give

    E V(t) <= V(0) e^{-alpha t} + beta/alpha (1 - e^{-alpha t})

so ``beta/alpha`` bounds the long-run mean squared distance from ``x*``. When it exceeds the
size of the vocabulary cloud, paths wander off the embeddings: text goes off the rails.

All functions are pure: torch tensors or numpy arrays in, float64 numpy arrays (or small
named tuples of floats) out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import numpy as np

from .metrics import ArrayLike, as_float64

# A grid of candidate alphas, relative to the data's own rate scale mean|LV| / mean V:
# 0, then log-spaced over nine decades, then two zooms around the best point.
_GRID_DECADES = (-6.0, 3.0)
_GRID_PER_DECADE = 24
_ZOOM_POINTS = 33
_ZOOMS = 3
_CHUNK_ELEMENTS = 4_000_000


def _check_states(x: np.ndarray, name: str = "x") -> None:
    if x.ndim != 3:
        raise ValueError(f"{name} must have shape (paths, steps, dim); got shape {tuple(x.shape)}")


def lyapunov_V(x: ArrayLike, x_star: ArrayLike) -> np.ndarray:
    """Lyapunov function ``V(x) = |x - x*|^2`` at every state.

    x: (paths, steps, dim); x_star: (dim,) (or anything broadcastable to x).
    Returns (paths, steps); NaN where the state is NaN (a path stopped after divergence).
    """
    x, x_star = as_float64(x), as_float64(x_star)
    _check_states(x)
    return np.sum((x - x_star) ** 2, axis=-1)


def lyapunov_LV(x: ArrayLike, mu: ArrayLike, sigma2_sum: ArrayLike, x_star: ArrayLike,
                scale: float = 1.0) -> np.ndarray:
    """Generator of ``V`` along states: ``LV = 2 (x - x*) . mu + s^2 * sum_d sigma_d^2``.

    x, mu: (paths, steps, dim), the drift evaluated at those states;
    sigma2_sum: (paths, steps), ``sum_d sigma_d(x)^2`` of the unscaled diffusion at those states;
    x_star: (dim,); scale: the diffusion scale ``s``. Returns (paths, steps).
    """
    x, mu, sigma2_sum, x_star = as_float64(x), as_float64(mu), as_float64(sigma2_sum), as_float64(x_star)
    _check_states(x)
    if mu.shape != x.shape:
        raise ValueError(f"mu must have the shape of x {tuple(x.shape)}; got {tuple(mu.shape)}")
    if sigma2_sum.shape != x.shape[:2]:
        raise ValueError(f"sigma2_sum must have shape (paths, steps) = {tuple(x.shape[:2])}; "
                         f"got {tuple(sigma2_sum.shape)}")
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be a finite number >= 0; got {scale}")
    return 2.0 * np.sum((x - x_star) * mu, axis=-1) + scale ** 2 * sigma2_sum


class Envelope(NamedTuple):
    """A fitted upper envelope ``LV <= -alpha V + beta``.

    ``alpha == 0`` means the samples admit no decaying envelope (LV does not fall as V
    grows): the bound then only gives linear growth ``V(0) + beta t``.
    """

    alpha: float
    beta: float

    @property
    def stable(self) -> bool:
        """Whether the envelope has ``alpha > 0`` and a finite ``beta``."""
        return self.alpha > 0 and math.isfinite(self.beta)

    @property
    def ultimate(self) -> float:
        """The ultimate bound ``beta/alpha`` on ``E V`` (``inf`` when not stable)."""
        return self.beta / self.alpha if self.stable else math.inf


def _betas(V: np.ndarray, LV: np.ndarray, alphas: np.ndarray, k: int) -> np.ndarray:
    """beta(alpha) = k-th smallest of ``LV + alpha V`` for each alpha (the empirical quantile)."""
    out = np.empty(len(alphas))
    chunk = max(1, _CHUNK_ELEMENTS // max(len(V), 1))
    for i in range(0, len(alphas), chunk):
        z = LV[None, :] + alphas[i:i + chunk, None] * V[None, :]
        out[i:i + chunk] = np.partition(z, k, axis=1)[:, k]
    # At x = x* the generator is s^2 sum sigma^2 >= 0, so a valid envelope has beta >= 0;
    # raising beta to 0 keeps it an upper envelope and keeps beta/alpha meaningful.
    return np.maximum(out, 0.0)


def _objective(rule: str, alphas: np.ndarray, betas: np.ndarray, v_mean: float, lv_mean: float) -> np.ndarray:
    if rule == "gap":
        # mean over samples of (-alpha V + beta) - LV: the average height of the envelope above the data
        return betas - alphas * v_mean - lv_mean
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(alphas > 0, betas / alphas, np.inf)


def fit_envelope(V: ArrayLike, LV: ArrayLike, *, quantile: float = 0.99,
                 rule: Literal["gap", "bound"] = "gap", max_points: int = 100_000) -> Envelope:
    """Fit the upper envelope ``LV <= -alpha V + beta`` holding for at least ``quantile`` of the samples.

    V, LV: the same shape, e.g. (paths, steps); pairs with a non-finite value are dropped.

    For each candidate ``alpha >= 0``, ``beta(alpha)`` is the empirical ``quantile`` of
    ``LV + alpha V`` (an order statistic, so at least that fraction of the pairs lie on or
    under the line). Among these lines the rule picks ``alpha``:

    - ``"gap"`` (default): the tightest envelope on average, minimising the mean gap
      ``mean(-alpha V + beta - LV) = beta(alpha) - alpha mean(V) - mean(LV)``. On pairs from a
      linear SDE (``LV = -a V + b`` exactly) this returns ``alpha = a, beta = b`` whatever
      range of V the samples cover.
    - ``"bound"``: the smallest ultimate bound ``beta/alpha`` over ``alpha > 0``. It is the
      tightest claim about ``E V``, but it recovers ``a`` only when the samples straddle the
      equilibrium ``V = b/a``; otherwise alpha runs to the top of the search grid.

    ``beta`` is never below 0 (``LV(x*) = s^2 sum sigma^2 >= 0``). Candidates are alpha = 0 and a
    log grid over nine decades around the rate scale ``mean|LV| / mean V``, refined three times
    around the best point (relative resolution ~1e-5). With more than ``max_points`` pairs,
    alpha is searched on a fixed-seed random subset of that size (each candidate costs one
    partial sort) and beta is then taken on all pairs, so the coverage is exact. If the gap
    rule's best alpha is 0, no decaying envelope fits the samples: the result is
    ``Envelope(0.0, beta(0))`` with ``stable == False`` and ``ultimate == inf``.
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1]; got {quantile}")
    if rule not in ("gap", "bound"):
        raise ValueError(f"rule must be 'gap' or 'bound'; got {rule!r}")
    V, LV = as_float64(V), as_float64(LV)
    if V.shape != LV.shape:
        raise ValueError(f"V and LV must have the same shape; got {tuple(V.shape)} and {tuple(LV.shape)}")
    V, LV = V.ravel(), LV.ravel()
    keep = np.isfinite(V) & np.isfinite(LV)
    V, LV = V[keep], LV[keep]
    if V.size == 0:
        raise ValueError("no finite (V, LV) pairs to fit an envelope on")
    if np.any(V < 0):
        raise ValueError("V must be >= 0 (it is a squared distance)")
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1; got {max_points}")
    V_all, LV_all = V, LV
    k_all = _rank(V.size, quantile)
    if V.size > max_points:
        pick = np.random.default_rng(0).choice(V.size, size=max_points, replace=False)
        V, LV = V[pick], LV[pick]
    k = _rank(V.size, quantile)
    v_mean, lv_mean = float(V.mean()), float(LV.mean())
    v_scale = v_mean if v_mean > 0 else 1.0
    lv_scale = float(np.abs(LV).mean()) or 1.0
    a0 = lv_scale / v_scale

    n_log = int(round((_GRID_DECADES[1] - _GRID_DECADES[0]) * _GRID_PER_DECADE)) + 1
    grid = np.concatenate([[0.0], a0 * np.logspace(*_GRID_DECADES, n_log)])
    best_alpha, best_obj = 0.0, np.inf
    for _ in range(_ZOOMS + 1):
        obj = _objective(rule, grid, _betas(V, LV, grid, k), v_mean, lv_mean)
        i = int(np.argmin(obj))
        if obj[i] < best_obj:
            best_alpha, best_obj = float(grid[i]), float(obj[i])
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        grid = np.linspace(lo, hi, _ZOOM_POINTS)
    if not np.isfinite(best_obj) or best_alpha <= 0.0:
        best_alpha = 0.0
    return Envelope(best_alpha, float(_betas(V_all, LV_all, np.array([best_alpha]), k_all)[0]))


def _rank(n: int, quantile: float) -> int:
    """Index of numpy's "higher" ``quantile`` in n sorted values: at least that fraction lies at or below it."""
    return min(n - 1, math.ceil(quantile * (n - 1)))


def lyapunov_bound(V0: ArrayLike, alpha: float, beta: float, t: ArrayLike) -> np.ndarray:
    """The Lyapunov bound ``E V(t) <= V(0) e^{-alpha t} + beta/alpha (1 - e^{-alpha t})``.

    V0: a scalar (the mean starting V, or a deterministic start) or (n,); t: (steps,) times
    from the start. Returns (steps,) for a scalar V0, else (n, steps). With ``alpha == 0``
    this is the limit ``V(0) + beta t``; an infinite beta gives inf for t > 0.
    """
    V0, t = as_float64(V0), as_float64(t)
    if alpha < 0 or math.isnan(alpha):
        raise ValueError(f"alpha must be >= 0; got {alpha}")
    if np.any(t < 0):
        raise ValueError("times t must be >= 0")
    if V0.ndim > 1:
        raise ValueError(f"V0 must be a scalar or shape (n,); got shape {tuple(V0.shape)}")
    V0 = V0[..., None] if V0.ndim == 1 else V0
    if alpha == 0:
        growth = t.copy()  # lim_{alpha->0} (1 - e^{-alpha t}) / alpha = t
    else:
        growth = -np.expm1(-alpha * t) / alpha  # (1 - e^{-alpha t}) / alpha, accurate for small alpha t
    with np.errstate(invalid="ignore"):
        # beta = inf at t = 0 would give inf * 0 = nan; the bound there is V0
        drive = np.where(growth > 0, beta * growth, 0.0)
    return V0 * np.exp(-alpha * t) + drive


def cloud_radius2(points: ArrayLike, center: ArrayLike | None = None, quantile: float = 0.99) -> float:
    """The ``quantile`` of ``|e - center|^2`` over points e (n, dim), e.g. the vocabulary's
    embedding rows about x*: the size that ``beta/alpha`` is compared with. ``center``
    defaults to the points' mean."""
    p = as_float64(points)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"points must have shape (n, dim) with n >= 1; got {tuple(p.shape)}")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1]; got {quantile}")
    c = p.mean(axis=0) if center is None else as_float64(center)
    return float(np.quantile(np.sum((p - c) ** 2, axis=1), quantile))


def critical_scale(scales: ArrayLike, ultimate: ArrayLike | Callable[[float], float], r2: float) -> float | None:
    """The smallest diffusion scale ``s`` at which the ultimate bound ``beta/alpha`` exceeds ``r2``.

    scales: (n,) swept scales (any order); ultimate: (n,) ``beta/alpha`` at each scale
    (``inf`` for an unstable fit, NaN for a missing point, which is skipped), or a function
    ``s -> beta/alpha`` evaluated at each scale; r2: the squared radius of the vocabulary
    cloud (see ``cloud_radius2``).

    Between the last sweep point with ``beta/alpha <= r2`` and the first above it, the
    crossing is found by linear interpolation,
    ``s* = s0 + (r2 - u0) / (u1 - u0) * (s1 - s0)``; if u1 is infinite the crossing cannot be
    interpolated and ``s1`` is returned. Returns the smallest scale if the first point
    already exceeds ``r2``, and None if no point does.
    """
    s = as_float64(scales).ravel()
    u = np.array([float(ultimate(float(v))) for v in s]) if callable(ultimate) else as_float64(ultimate).ravel()
    if s.shape != u.shape:
        raise ValueError(f"scales and ultimate must have the same length; got {s.size} and {u.size}")
    if not math.isfinite(r2):
        raise ValueError(f"r2 must be finite; got {r2}")
    keep = ~np.isnan(u) & np.isfinite(s)
    s, u = s[keep], u[keep]
    order = np.argsort(s, kind="stable")
    s, u = s[order], u[order]
    above = np.flatnonzero(u > r2)
    if above.size == 0:
        return None
    i = int(above[0])
    if i == 0:
        return float(s[0])
    s0, s1, u0, u1 = s[i - 1], s[i], u[i - 1], u[i]
    if not math.isfinite(u1):
        return float(s1)
    return float(s0 + (r2 - u0) / (u1 - u0) * (s1 - s0))
