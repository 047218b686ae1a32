"""Known-answer tests for the Lyapunov and process-property functions (docs/design.md §4.1 and §4.2).

Paths come from a plain torch Euler-Maruyama loop with a fixed seed, so the checks are
deterministic; tolerances are a few Monte Carlo standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import envelope_coverage

from sdecore.processes import (
    increment_autocorrelation,
    integrated_sigma2,
    quadratic_variation,
)
from sdecore.stability import (
    Envelope,
    cloud_radius2,
    critical_scale,
    fit_envelope,
    lyapunov_bound,
    lyapunov_LV,
    lyapunov_V,
)


def euler_maruyama(drift, diffusion, x0: torch.Tensor, dt: float, steps: int, seed: int) -> torch.Tensor:
    """Paths (paths, steps + 1, dim) of dx = drift(x) dt + diffusion(x) dW (diagonal noise)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((steps, *x0.shape), generator=gen, dtype=torch.float64) * math.sqrt(dt)
    xs = [x0]
    x = x0
    for k in range(steps):
        x = x + drift(x) * dt + diffusion(x) * noise[k]
        xs.append(x)
    return torch.stack(xs, dim=1)


# ---------------------------------------------------------------- Lyapunov: linear (OU) SDE

THETA, SIGMA, DIM = 1.5, 0.8, 6


def ou_drift(x: torch.Tensor) -> torch.Tensor:
    return -THETA * x


def test_V_and_LV_of_linear_sde_match_the_closed_form():
    # dx = -theta x dt + s sigma dW, x* = 0: LV = -2 theta V + s^2 d sigma^2
    x = torch.randn(5, 7, DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scale = 1.7
    V = lyapunov_V(x, torch.zeros(DIM))
    LV = lyapunov_LV(x, ou_drift(x), torch.full((5, 7), DIM * SIGMA ** 2, dtype=torch.float64), np.zeros(DIM),
                     scale=scale)
    assert V.shape == LV.shape == (5, 7)
    np.testing.assert_allclose(V, (x ** 2).sum(-1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(LV, -2 * THETA * V + scale ** 2 * DIM * SIGMA ** 2, rtol=1e-12, atol=1e-12)
    # a shifted attractor: V measures distance to x*
    x_star = np.linspace(-1, 1, DIM)
    np.testing.assert_allclose(lyapunov_V(x, x_star), ((x.numpy() - x_star) ** 2).sum(-1))


@pytest.mark.parametrize("rule", ["gap", "bound"])
def test_envelope_on_exact_linear_pairs_recovers_alpha_and_beta(rule):
    # V spread around the equilibrium V = d sigma^2 / (2 theta) so both rules identify alpha
    x = euler_maruyama(ou_drift, lambda x: SIGMA, torch.full((256, DIM), 2.0, dtype=torch.float64),
                       0.01, 200, seed=1)
    V = lyapunov_V(x, np.zeros(DIM))
    LV = lyapunov_LV(x, ou_drift(x), torch.full(V.shape, DIM * SIGMA ** 2), np.zeros(DIM))
    env = fit_envelope(V, LV, quantile=0.99, rule=rule)
    assert isinstance(env, Envelope) and env.stable
    assert env.alpha == pytest.approx(2 * THETA, rel=1e-3)
    assert env.beta == pytest.approx(DIM * SIGMA ** 2, rel=1e-3)
    assert env.ultimate == pytest.approx(DIM * SIGMA ** 2 / (2 * THETA), rel=2e-3)
    assert envelope_coverage(V, LV, *env) >= 0.99


def test_gap_rule_recovers_alpha_even_when_samples_lie_on_one_side_of_equilibrium():
    rng = np.random.default_rng(2)
    V = rng.uniform(10.0, 50.0, 5000)  # far outside V_eq = b/a = 1: LV < 0 everywhere
    LV = -3.0 * V + 3.0
    alpha, beta = fit_envelope(V, LV)
    assert alpha == pytest.approx(3.0, rel=1e-3) and beta == pytest.approx(3.0, rel=1e-2)


def test_bound_matches_closed_form_and_simulated_mean_of_ou():
    # E V(t) = V0 e^{-2 theta t} + d sigma^2 / (2 theta) (1 - e^{-2 theta t}) exactly for OU
    paths, dt, steps = 4000, 0.005, 400
    x0 = torch.full((paths, DIM), 1.2, dtype=torch.float64)
    x = euler_maruyama(ou_drift, lambda x: SIGMA, x0, dt, steps, seed=3)
    t = np.arange(steps + 1) * dt
    V = lyapunov_V(x, np.zeros(DIM))
    LV = lyapunov_LV(x, ou_drift(x), np.full(V.shape, DIM * SIGMA ** 2), np.zeros(DIM))
    env = fit_envelope(V, LV)
    V0 = float(V[0, 0])
    closed = V0 * np.exp(-2 * THETA * t) + DIM * SIGMA ** 2 / (2 * THETA) * (1 - np.exp(-2 * THETA * t))
    bound = lyapunov_bound(V0, env.alpha, env.beta, t)
    assert bound.shape == t.shape
    np.testing.assert_allclose(bound, closed, rtol=2e-3)
    np.testing.assert_allclose(lyapunov_bound(V0, 2 * THETA, DIM * SIGMA ** 2, t), closed, rtol=1e-12)
    # the simulated mean sits on the bound (equality for a linear SDE), up to Monte Carlo
    # error (sd ~0.9% at each time, max ~2% over the 400 steps) and the O(dt) Euler-Maruyama bias (~0.4%)
    mean_V = V.mean(axis=0)
    np.testing.assert_allclose(mean_V, closed, rtol=0.04)
    assert np.all(mean_V <= bound * 1.04)


def test_bound_holds_for_a_nonlinear_contracting_sde():
    # mu = -x - |x|^2 x contracts faster than linearly: LV = -2V - 2V^2 + d sigma^2, and the
    # fitted linear envelope gives a valid (not tight) bound on the simulated mean.
    def drift(x):
        return -x - (x ** 2).sum(-1, keepdim=True) * x

    d, sigma, dt, steps = 3, 0.7, 0.002, 500
    x = euler_maruyama(drift, lambda x: sigma, torch.full((2000, d), 1.0, dtype=torch.float64), dt, steps, seed=4)
    V = lyapunov_V(x, np.zeros(d))
    LV = lyapunov_LV(x, drift(x), np.full(V.shape, d * sigma ** 2), np.zeros(d))
    np.testing.assert_allclose(LV, -2 * V - 2 * V ** 2 + d * sigma ** 2, rtol=1e-10)
    env = fit_envelope(V, LV)
    assert env.stable and envelope_coverage(V, LV, *env) >= 0.99
    bound = lyapunov_bound(float(V[0, 0]), env.alpha, env.beta, np.arange(steps + 1) * dt)
    assert np.all(V.mean(axis=0) <= bound * 1.02)


def test_bound_formula_edge_cases():
    t = np.array([0.0, 1.0, 2.0])
    np.testing.assert_allclose(lyapunov_bound(5.0, 0.0, 2.0, t), [5.0, 7.0, 9.0])  # alpha -> 0 limit
    assert lyapunov_bound(np.array([1.0, 2.0]), 1.0, 1.0, t).shape == (2, 3)
    np.testing.assert_allclose(lyapunov_bound(3.0, 1e-12, 1.0, t), [3.0, 4.0, 5.0], rtol=1e-9)
    assert lyapunov_bound(3.0, 0.0, math.inf, t).tolist() == [3.0, math.inf, math.inf]
    with pytest.raises(ValueError, match="alpha"):
        lyapunov_bound(1.0, -1.0, 1.0, t)


# ---------------------------------------------------------------- envelope on noisy data

def test_envelope_is_an_upper_envelope_not_a_least_squares_line():
    rng = np.random.default_rng(5)
    V = rng.uniform(0.0, 20.0, 20_000)
    LV = -2.0 * V + 4.0 + rng.normal(0.0, 1.5, V.size)
    env = fit_envelope(V, LV, quantile=0.99)
    slope, intercept = np.polyfit(V, LV, 1)
    above_ls = np.mean(LV > slope * V + intercept)
    above_env = 1.0 - envelope_coverage(V, LV, *env)
    assert above_ls > 0.4  # a least-squares line has about half the points above it
    assert above_env <= 0.01
    assert above_env >= 0.005  # and the envelope is tight: not far above the 99% line
    # homoscedastic noise: the tightest 99% envelope is the true line raised by z_0.99 * sd
    assert env.alpha == pytest.approx(2.0, rel=0.05)
    assert env.beta == pytest.approx(4.0 + 2.326 * 1.5, rel=0.1)
    assert envelope_coverage(V, LV, *fit_envelope(V, LV, quantile=0.9)) == pytest.approx(0.9, abs=0.01)


def test_envelope_reports_no_stable_fit_when_LV_grows_with_V():
    rng = np.random.default_rng(6)
    V = rng.uniform(0.0, 10.0, 2000)
    LV = 0.5 * V + 1.0 + rng.normal(0.0, 0.1, V.size)
    env = fit_envelope(V, LV)
    assert env.alpha == 0.0 and not env.stable and env.ultimate == math.inf
    assert envelope_coverage(V, LV, *env) >= 0.99


def test_envelope_drops_nan_and_validates():
    V = np.array([[1.0, 2.0, np.nan], [3.0, 4.0, 5.0]])
    LV = -V + 1.0
    alpha, beta = fit_envelope(V, LV, quantile=1.0)
    assert alpha == pytest.approx(1.0, rel=1e-3) and beta == pytest.approx(1.0, rel=1e-2)
    with pytest.raises(ValueError, match="same shape"):
        fit_envelope(V, LV[:, :2])
    with pytest.raises(ValueError, match="quantile"):
        fit_envelope(V, LV, quantile=1.5)
    with pytest.raises(ValueError, match="no finite"):
        fit_envelope([np.nan], [1.0])


# ---------------------------------------------------------------- critical scale

def test_critical_scale_interpolates_between_sweep_points():
    scales = [1.5, 0.0, 1.0, 0.5]  # any order
    ultimate = [8.0, 1.0, 4.0, 2.0]
    assert critical_scale(scales, ultimate, 3.0) == pytest.approx(0.75)  # 0.5 + (3-2)/(4-2) * 0.5
    assert critical_scale(scales, ultimate, 100.0) is None
    assert critical_scale(scales, ultimate, 0.5) == 0.0  # already above at the smallest scale
    assert critical_scale([0.0, 1.0, 2.0], [1.0, np.nan, 5.0], 3.0) == pytest.approx(1.0)  # NaN skipped
    assert critical_scale([0.0, 1.0, 2.0], [1.0, 2.0, math.inf], 3.0) == 2.0  # unstable: no interpolation
    # a function of s: beta/alpha = 1 + s^2 on a grid of step 0.5 crosses 4 between 1.5 and 2
    s_star = critical_scale(np.linspace(0, 4, 9), lambda s: 1 + s ** 2, 4.0)
    assert s_star == pytest.approx(1.5 + (4 - 3.25) / (5 - 3.25) * 0.5)


def test_critical_scale_of_ou_sweep_matches_analytic_crossing():
    # beta/alpha = s^2 d sigma^2 / (2 theta) crosses R2 at s = sqrt(2 theta R2 / (d sigma^2))
    rng = np.random.default_rng(7)
    x = rng.normal(0.0, 1.0, (64, 20, DIM))
    V = lyapunov_V(x, np.zeros(DIM))

    def ultimate(s):
        LV = lyapunov_LV(x, -THETA * x, np.full(V.shape, DIM * SIGMA ** 2), np.zeros(DIM), scale=s)
        return fit_envelope(V, LV).ultimate

    r2 = 4.0
    exact = math.sqrt(2 * THETA * r2 / (DIM * SIGMA ** 2))
    s_star = critical_scale(np.linspace(0.25, 3.0, 12), ultimate, r2)
    assert s_star == pytest.approx(exact, rel=0.02)  # linear interpolation of a parabola


def test_cloud_radius2():
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    assert cloud_radius2(pts, center=np.zeros(2), quantile=1.0) == 9.0
    assert cloud_radius2(pts, center=np.zeros(2), quantile=0.5) == pytest.approx(2.5)


# ---------------------------------------------------------------- process properties

def test_quadratic_variation_and_integrated_sigma2_by_hand():
    x = np.array([[[0.0, 0.0], [1.0, 0.0], [1.0, 2.0]]])
    np.testing.assert_allclose(quadratic_variation(x), [[0.0, 1.0, 5.0]])
    g = np.array([[2.0, 3.0, 100.0]])  # the last value is never used by the left-point rule
    np.testing.assert_allclose(integrated_sigma2(g, 0.5), [[0.0, 1.0, 2.5]])
    np.testing.assert_allclose(integrated_sigma2(g, [0.5, 1.0], scale=2.0), [[0.0, 4.0, 16.0]])
    xn = np.array([[[0.0], [1.0], [np.nan], [2.0]]])
    assert np.isnan(quadratic_variation(xn)[0, 2:]).all()


def test_quadratic_variation_matches_d_sigma2_t_for_constant_sigma():
    d, dt, steps, scale = 4, 0.001, 1000, 1.5
    x = euler_maruyama(ou_drift, lambda x: scale * SIGMA, torch.zeros(32, d, dtype=torch.float64), dt, steps, 9)
    qv = quadratic_variation(x)
    integral = integrated_sigma2(np.full(qv.shape, d * SIGMA ** 2), dt, scale=scale)
    t_end = steps * dt
    assert integral[0, -1] == pytest.approx(d * scale ** 2 * SIGMA ** 2 * t_end)
    # each path: sum of n*d squared Gaussians, relative sd sqrt(2 / (n d)) ~ 2.2%
    np.testing.assert_allclose(qv[:, -1], integral[:, -1], rtol=0.1)
    assert qv[:, -1].mean() == pytest.approx(integral[0, -1], rel=0.02)


def test_quadratic_variation_matches_integrated_state_dependent_sigma2():
    d, dt, steps = 3, 0.0005, 2000

    def sig(x):
        return 0.6 * torch.sqrt(1.0 + 0.8 * torch.cos(3 * x))

    x = euler_maruyama(ou_drift, sig, torch.zeros(64, d, dtype=torch.float64), dt, steps, 10)
    qv = quadratic_variation(x)
    integral = integrated_sigma2((sig(x) ** 2).sum(-1), dt)
    ratio = qv[:, -1] / integral[:, -1]
    assert np.all(np.abs(ratio - 1) < 0.1)
    assert ratio.mean() == pytest.approx(1.0, abs=0.01)


def test_brownian_increments_are_uncorrelated():
    x = euler_maruyama(lambda x: 0.3 * torch.ones_like(x), lambda x: 2.0, torch.zeros(100, 4, dtype=torch.float64),
                       0.01, 500, seed=11)
    rho = increment_autocorrelation(x, max_lag=5)
    assert rho.shape == (6,) and rho[0] == 1.0
    n = 100 * 500 * 4
    assert np.all(np.abs(rho[1:]) < 4 / math.sqrt(n))


def test_ar1_increments_have_known_autocorrelation():
    # stationary x_{k+1} = phi x_k + e_k: increments have rho(l) = -phi^{l-1} (1 - phi) / 2
    phi, paths, steps, d = 0.5, 200, 500, 4
    rng = np.random.default_rng(12)
    x = np.empty((paths, steps, d))
    x[:, 0] = rng.normal(0.0, 1.0 / math.sqrt(1 - phi ** 2), (paths, d))
    e = rng.normal(0.0, 1.0, (paths, steps, d))
    for k in range(1, steps):
        x[:, k] = phi * x[:, k - 1] + e[:, k]
    rho = increment_autocorrelation(x, max_lag=3)
    expected = [1.0] + [-(phi ** (lag - 1)) * (1 - phi) / 2 for lag in (1, 2, 3)]
    np.testing.assert_allclose(rho, expected, atol=0.01)


def test_ma1_increments_with_nan_after_divergence():
    # increments e_k + b e_{k-1}: rho(1) = b / (1 + b^2), rho(l >= 2) = 0; NaN tails are skipped
    b, rng = 0.6, np.random.default_rng(13)
    e = rng.normal(0.0, 1.0, (200, 801, 3))
    inc = e[:, 1:] + b * e[:, :-1]
    x = np.concatenate([np.zeros((200, 1, 3)), np.cumsum(inc, axis=1)], axis=1)
    x[:20, 400:] = np.nan
    rho = increment_autocorrelation(x, max_lag=3)
    np.testing.assert_allclose(rho, [1.0, b / (1 + b ** 2), 0.0, 0.0], atol=0.01)
    with pytest.raises(ValueError, match="max_lag"):
        increment_autocorrelation(x, max_lag=800)
