"""The engine's grid and Brownian path against known answers: Euler-Maruyama on them gives
Ornstein-Uhlenbeck's moments and the strong order one half, and equals torchsde's euler on the
same Brownian path (the text model's own em against euler is in test_simulate.py)."""

import math

import numpy as np
import pytest
import torch
import torchsde

from sdecore.simulate import brownian_path, solver_grid


def em_step(sde, y, grid, bm):
    """Euler-Maruyama, y <- y + f dt + g dW, over the engine's grid and Brownian path: the update
    the sampler makes (sdecore.simulate._em_lockstep), written for any torchsde-style SDE."""
    for a, b in grid:
        y = y + sde.f(a, y) * (b - a) + sde.g(a, y) * bm(a, b)
    return y


class OU:
    """dx = -theta (x - m) dt + sigma dW."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, theta, m, sigma):
        self.theta, self.m, self.sigma = theta, m, sigma

    def f(self, t, y):
        return -self.theta * (y - self.m)

    def g(self, t, y):
        return torch.full_like(y, self.sigma)


class GBM:
    """dx = a x dt + b x dW, solved exactly by x0 exp((a - b^2/2) t + b W_t)."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, a, b):
        self.a, self.b = a, b

    def f(self, t, y):
        return self.a * y

    def g(self, t, y):
        return self.b * y


def _run_em(sde, y0, t1, steps, seed):
    step = t1 / steps
    bm = brownian_path(0.0, t1, y0.shape[0], y0.shape[1], step, seed, torch.device("cpu"), torch.float64)
    grid = solver_grid(torch.tensor(0.0, dtype=torch.float64), torch.tensor(t1, dtype=torch.float64), step)
    w_total = sum(bm(a, b) for a, b in grid)
    return em_step(sde, y0, grid, bm), w_total


def test_ou_mean_and_variance_match_closed_form():
    theta, m, sigma, x0, t1 = 1.5, 0.7, 0.8, -1.0, 2.0
    y0 = torch.full((20000, 1), x0, dtype=torch.float64)
    y, _ = _run_em(OU(theta, m, sigma), y0, t1, steps=400, seed=3)
    mean = m + (x0 - m) * math.exp(-theta * t1)
    var = sigma**2 / (2 * theta) * (1 - math.exp(-2 * theta * t1))
    n = y.shape[0]
    assert abs(y.mean().item() - mean) < 4 * math.sqrt(var / n)
    # sample variance: standard error about var * sqrt(2 / n); EM adds O(dt) bias
    assert abs(y.var().item() - var) < 4 * var * math.sqrt(2 / n) + 0.01


def test_euler_maruyama_strong_order_one_half():
    a, b, x0, t1 = 0.5, 0.9, 1.0, 1.0
    y0 = torch.full((4000, 1), x0, dtype=torch.float64)
    steps = [8, 16, 32, 64, 128]
    errors = []
    for n in steps:
        y, w = _run_em(GBM(a, b), y0, t1, n, seed=11)
        exact = x0 * torch.exp((a - b * b / 2) * t1 + b * w)
        errors.append((y - exact).abs().mean().item())
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]  # error ~ C dt^order
    assert 0.35 < slope < 0.7, (slope, errors)
    assert errors[-1] < errors[0] / 2.5


def test_solver_grid_matches_torchsde_steps():
    t0, t1 = torch.tensor(3.0), torch.tensor(4.0)
    for sub in (1, 3, 7):
        grid = solver_grid(t0, t1, 1.0 / sub)
        assert len(grid) >= sub and grid[-1][1] == t1 and grid[0][0] == t0


@pytest.mark.parametrize("substeps", [1, 3])
def test_em_equals_torchsde_euler_on_the_same_path(substeps):
    sde = OU(1.0, 0.2, 0.6)
    y0 = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    t0, t1, step = torch.tensor(0.0), torch.tensor(1.0), 1.0 / substeps
    bm1 = brownian_path(0.0, 1.0, 16, 4, step, 9, torch.device("cpu"))
    bm2 = brownian_path(0.0, 1.0, 16, 4, step, 9, torch.device("cpu"))
    ours = em_step(sde, y0, solver_grid(t0, t1, step), bm1)
    ref = torchsde.sdeint(sde, y0, torch.stack([t0, t1]), bm=bm2, method="euler", dt=step)[-1]
    torch.testing.assert_close(ours, ref)
