"""Two-dimensional toy SDEs for the Primer page: pure numpy, fast.

    dX = mu(X) dt + sigma dW,   X in R^2, sigma a scalar noise level (the same on both axes)

- Ornstein-Uhlenbeck: mu(x) = -k x (potential U = k |x|^2 / 2);
- double well: mu(x) = -k (x_1^3 - x_1, x_2) (potential U = k ((x_1^2 - 1)^2 / 4 + x_2^2 / 2)).

With V(x) = |x|^2 the generator is LV = 2 x . mu + 2 sigma^2. For the OU process
LV = -2k V + 2 sigma^2 exactly, so alpha = 2k, beta = 2 sigma^2 and the Lyapunov bound
equals the true mean, E V(t) = V(0) e^{-2kt} + sigma^2 / k (1 - e^{-2kt}).
"""

from __future__ import annotations

import numpy as np

KINDS = ("Ornstein-Uhlenbeck", "double well")


def drift(kind: str, x: np.ndarray, strength: float) -> np.ndarray:
    """mu(x) for points x (..., 2)."""
    if kind == KINDS[0]:
        return -strength * x
    if kind == KINDS[1]:
        return -strength * np.stack([x[..., 0] ** 3 - x[..., 0], x[..., 1]], axis=-1)
    raise ValueError(f"unknown toy SDE {kind!r}; choose one of {', '.join(KINDS)}")


def potential(kind: str, x: np.ndarray, strength: float) -> np.ndarray:
    """U(x) with mu = -grad U, for points x (..., 2)."""
    if kind == KINDS[0]:
        return 0.5 * strength * np.sum(x ** 2, axis=-1)
    return strength * ((x[..., 0] ** 2 - 1.0) ** 2 / 4.0 + x[..., 1] ** 2 / 2.0)


def simulate(kind: str, strength: float, noise: float, paths: int, t_end: float = 8.0, dt: float = 0.02,
             seed: int = 0, x0=(2.0, 1.5)) -> tuple[np.ndarray, np.ndarray]:
    """Euler-Maruyama paths X_{n+1} = X_n + mu(X_n) dt + sigma sqrt(dt) Z_n from x0.

    Returns t (steps + 1,) and X (paths, steps + 1, 2). Paths leaving |x| > 1e3 (too coarse
    a step for the drift) are set to NaN from then on."""
    if not (strength >= 0 and noise >= 0 and paths >= 1 and dt > 0):
        raise ValueError("strength and noise must be >= 0, paths >= 1 and dt > 0")
    steps = int(round(t_end / dt))
    rng = np.random.default_rng(seed)
    dw = rng.standard_normal((steps, paths, 2)) * np.sqrt(dt)
    x = np.empty((paths, steps + 1, 2))
    x[:, 0] = np.asarray(x0, dtype=np.float64)
    cur = x[:, 0].copy()
    with np.errstate(over="ignore", invalid="ignore"):
        for n in range(steps):
            cur = cur + drift(kind, cur, strength) * dt + noise * dw[n]
            cur[~(np.abs(cur) < 1e3).all(-1)] = np.nan
            x[:, n + 1] = cur
    return np.arange(steps + 1) * dt, x


def lyapunov(kind: str, x: np.ndarray, strength: float, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """V = |x|^2 and LV = 2 x . mu + 2 sigma^2 along paths x (paths, steps, 2): each (paths, steps)."""
    V = np.sum(x ** 2, axis=-1)
    LV = 2.0 * np.sum(x * drift(kind, x, strength), axis=-1) + 2.0 * noise ** 2
    return V, LV


def ou_mean_V(t: np.ndarray, x0, strength: float, noise: float) -> np.ndarray:
    """Exact E V(t) of the 2-D OU process from x0: |x0|^2 e^{-2kt} + sigma^2/k (1 - e^{-2kt})
    (sigma^2 t at k = 0, Brownian motion)."""
    v0 = float(np.sum(np.asarray(x0, dtype=np.float64) ** 2))
    if strength == 0:
        return v0 + 2.0 * noise ** 2 * t
    decay = np.exp(-2.0 * strength * t)
    return v0 * decay + noise ** 2 / strength * (1.0 - decay)


def field(kind: str, strength: float, lim: float = 2.6, n: int = 15, n_fine: int = 80) -> dict:
    """The drift on a coarse grid (arrows) and the potential on a fine grid (contours)."""
    g = np.linspace(-lim, lim, n)
    gx, gy = np.meshgrid(g, g)
    pts = np.stack([gx, gy], axis=-1)
    mu = drift(kind, pts, strength)
    f = np.linspace(-lim, lim, n_fine)
    fx, fy = np.meshgrid(f, f)
    return {"x": gx.ravel(), "y": gy.ravel(), "u": mu[..., 0].ravel(), "v": mu[..., 1].ravel(), "fine": f,
            "U": potential(kind, np.stack([fx, fy], axis=-1), strength)}
