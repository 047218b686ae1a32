"""Process properties of sample paths (docs/design.md §4.2).

For ``dX = mu dt + s sigma dW`` the paths' quadratic variation

    [X]_t = lim sum_k |X_{t_{k+1}} - X_{t_k}|^2 = s^2 int_0^t sum_d sigma_d^2(X_u) du

and the autocorrelation of their increments (zero at every lag >= 1 for Brownian increments;
nonzero when the drift carries memory). States of a path stopped after divergence are NaN
from then on; every function here lets NaN through or skips it, as documented.

All functions are pure: torch tensors or numpy arrays in, float64 numpy arrays out.
"""

from __future__ import annotations

import math

import numpy as np

from .metrics import ArrayLike, as_float64, finite_mean


def _states(x: ArrayLike) -> np.ndarray:
    x = as_float64(x)
    if x.ndim != 3:
        raise ValueError(f"x must have shape (paths, steps, dim); got shape {tuple(x.shape)}")
    return x


def quadratic_variation(x: ArrayLike) -> np.ndarray:
    """Realised quadratic variation ``QV_k = sum_{j<k} |x_{j+1} - x_j|^2`` (summed over dims).

    x: (paths, steps, dim). Returns (paths, steps) with ``QV_0 = 0``; NaN from the first
    NaN state of a path on.
    """
    x = _states(x)
    inc2 = np.sum(np.diff(x, axis=1) ** 2, axis=-1)
    return np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(inc2, axis=1)], axis=1)


def integrated_sigma2(sigma2_sum: ArrayLike, dt: float | ArrayLike, scale: float = 1.0) -> np.ndarray:
    """The integral ``s^2 int_0^{t_k} sum_d sigma_d^2 du`` by the left-point (Ito) rule,
    ``I_k = s^2 sum_{j<k} sigma2_sum_j dt_j``, to set against ``quadratic_variation``.

    sigma2_sum: (paths, steps), ``sum_d sigma_d^2`` of the unscaled diffusion at each state;
    dt: the time step, a scalar or (steps - 1,); scale: the diffusion scale ``s``.
    Returns (paths, steps) with ``I_0 = 0``.
    """
    g = as_float64(sigma2_sum)
    if g.ndim != 2:
        raise ValueError(f"sigma2_sum must have shape (paths, steps); got shape {tuple(g.shape)}")
    steps = np.broadcast_to(as_float64(dt), (g.shape[1] - 1,)) if np.ndim(as_float64(dt)) == 0 else as_float64(dt)
    if steps.shape != (g.shape[1] - 1,):
        raise ValueError(f"dt must be a scalar or have shape (steps - 1,) = ({g.shape[1] - 1},); "
                         f"got shape {tuple(steps.shape)}")
    if np.any(steps < 0):
        raise ValueError("dt must be >= 0")
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be a finite number >= 0; got {scale}")
    area = scale ** 2 * g[:, :-1] * steps
    return np.concatenate([np.zeros((g.shape[0], 1)), np.cumsum(area, axis=1)], axis=1)


def increment_autocorrelation(x: ArrayLike, max_lag: int, standardize: bool = True) -> np.ndarray:
    """Autocorrelation of the increments ``dx_k = x_{k+1} - x_k``, pooled over paths and dims.

    x: (paths, steps, dim); max_lag: 0 <= max_lag <= steps - 2. Returns (max_lag + 1,) with

        rho(l) = mean_{p, k, d} (z_{p,k,d} z_{p,k+l,d}) / mean_{p, k, d} (z_{p,k,d}^2),  rho(0) = 1

    where ``z`` is the increment minus its mean over paths and time in each dimension (the
    average drift), divided by that dimension's standard deviation when ``standardize`` (so
    every dimension weighs the same; otherwise wide dimensions dominate). Means run over the
    finite pairs only, so NaN after divergence is skipped. Brownian increments give
    ``rho(l) = 0`` for ``l >= 1``.
    """
    x = _states(x)
    n_inc = x.shape[1] - 1
    if not isinstance(max_lag, (int, np.integer)) or not 0 <= max_lag <= n_inc - 1:
        raise ValueError(f"max_lag must be an integer from 0 to steps - 2 = {n_inc - 1}; got {max_lag}")
    dx = np.diff(x, axis=1)
    finite = np.isfinite(dx)
    count = finite.sum(axis=(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = np.where(finite, dx, 0.0).sum(axis=(0, 1)) / count
        z = dx - centre
        if standardize:
            var = np.where(finite, z ** 2, 0.0).sum(axis=(0, 1)) / count
            z = z / np.sqrt(var)
    # a dimension with no finite increment or no variance carries no correlation information
    denom = finite_mean(z ** 2)
    if not denom > 0:
        raise ValueError("the increments have no finite, non-constant values; autocorrelation is undefined")
    rho = np.empty(max_lag + 1)
    rho[0] = 1.0
    for lag in range(1, max_lag + 1):
        rho[lag] = finite_mean(z[:, :-lag] * z[:, lag:]) / denom
    return rho
