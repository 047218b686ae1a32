"""The analysis layer on a trained model: Lyapunov curves and sweep, a text's trajectory."""

import numpy as np
import torch
from conftest import envelope_coverage

from sdecore import simulate_paths
from sdecore.analysis import (
    lyapunov_curves,
    probe_generator,
    sigma_ranking,
    stability_sweep,
    text_trajectory,
    vocabulary_radius2,
)

PROMPT = "How can I sleep better?"


def test_lyapunov_curves_hold_on_the_paths(tiny_model):
    p = simulate_paths(tiny_model.model, tiny_model.embedder, PROMPT, paths=8, tokens=12, diffusion_scale=1.0,
                       snap=False, record_states=True, substeps=2)
    lc = lyapunov_curves(tiny_model.model, p)
    assert lc.V.shape == lc.LV.shape == (8, 13) and lc.bound.shape == lc.t.shape == (13,)
    env = lc.envelope
    assert env.alpha > 0 and env.beta >= 0
    pv, plv = probe_generator(tiny_model.model, p)  # the envelope is fitted on paths and probes together
    both_v = np.concatenate([lc.V.ravel(), pv])
    both_lv = np.concatenate([lc.LV.ravel(), plv])
    assert envelope_coverage(both_v, both_lv, env.alpha, env.beta) >= 0.99
    assert np.isclose(lc.bound[0], np.nanmean(lc.V[:, 0])) and np.isclose(lc.mean_V[0], lc.V[0, 0])
    # LV from the recorded drift and sigma: 2 x.mu + s^2 sum sigma^2 at x* = 0
    x, mu = p.states[0, 3].double(), p.drift[0, 3].double()
    assert np.isclose(lc.LV[0, 3], float(2 * x @ mu + p.sigma2[0, 3]), rtol=1e-4)


def test_stability_sweep_bound_grows_with_the_scale(tiny_model):
    sw = stability_sweep(tiny_model.model, tiny_model.embedder, PROMPT, [0.0, 1.0, 3.0], paths=8, tokens=10)
    assert sw.alpha.shape == (3,) and sw.radius2 == vocabulary_radius2(tiny_model.model) > 0
    assert sw.beta[-1] > sw.beta[0]  # the s^2 sum sigma^2 term of LV
    if sw.critical is not None:
        assert 0.0 <= sw.critical <= 3.0


def test_text_trajectory_is_consistent_with_the_model(tiny_model):
    m, emb = tiny_model.model, tiny_model.embedder
    tr = text_trajectory(m, emb, "Keep a steady schedule and a dark, quiet room.")
    n = len(tr.tokens)
    assert tr.states.shape == tr.one_step.shape == tr.free_run.shape == (n, m.dim)
    assert tr.drift_loss.shape == tr.diffusion_loss.shape == tr.nll.shape == tr.sigma.shape == (n - 1,)
    np.testing.assert_allclose(tr.free_run[0], tr.states[0])
    ids = torch.as_tensor(tr.ids)
    np.testing.assert_allclose(tr.states, m.token_states(ids).numpy(), atol=1e-6)
    # mean per-token drift loss = the drift loss over the same transitions
    resid = tr.states[1:] - tr.one_step[1:]
    np.testing.assert_allclose(tr.drift_loss, (resid ** 2).mean(-1), rtol=1e-4)
    assert (tr.nll > 0).all() and (tr.sigma > 0).all()


def test_sigma_ranking_is_sorted(tiny_model):
    rows = sigma_ranking(tiny_model.model, tiny_model.embedder, ["water the plant", "run slowly every day"], top=5)
    assert 0 < len(rows) <= 5
    assert [r["mean_sigma"] for r in rows] == sorted((r["mean_sigma"] for r in rows), reverse=True)
