"""What the nets learned and the same noise at several scales (sdecore.interpret)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdecore import ModelConfig, interpret, simulate_paths
from sdecore.model import TextSDE


# ----------------------------------------------------------------------------- cycles in token sequences
@pytest.mark.parametrize("seq, expected", [
    ([5, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3], (1, 3)),
    ([9, 8, 7, 4, 4, 4, 4], (3, 1)),
    ([1, 2, 1, 2, 1, 2], (0, 2)),
    ([3, 1, 2, 3, 1, 2, 3, 1, 2], (0, 3)),  # the cycle reaches back to the first token
    ([1, 2, 3, 4, 5, 6, 7, 8], None),
    ([1, 2, 1, 2, 3], None),  # a loop that was left is not an attractor
    ([7, 1, 2, 1, 2], None),  # two repeats are not enough (three are asked for)
    ([], None),
])
def test_find_cycle_finds_the_smallest_period_and_where_it_starts(seq, expected):
    assert interpret.find_cycle(seq) == expected


def test_find_cycle_repeats_and_period_bounds():
    assert interpret.find_cycle([7, 1, 2, 1, 2], min_repeats=2) == (1, 2)
    assert interpret.find_cycle([1, 2, 3] * 4, max_period=2) is None


def test_follows_cycle_in_any_phase():
    cycle = [4, 5, 6]
    assert interpret.follows_cycle([1, 5, 6, 4, 5, 6, 4], cycle, 6)
    assert not interpret.follows_cycle([1, 5, 6, 4, 6, 5, 4], cycle, 6)
    assert not interpret.follows_cycle([5, 6], cycle, 6)  # too short to tell


def test_departures_and_the_share_that_has_left():
    drift = [1, 2, 3, 4]
    ids = np.array([[1, 2, 3, 4], [1, 9, 3, 4], [7, 2, 3, 4], [1, 2, -1, -1]])
    first = interpret.departures(ids, drift)
    assert first.tolist() == [-1, 1, 0, 2]
    assert interpret.left_share(first, 4).tolist() == [0.25, 0.5, 0.75, 0.75]


# ----------------------------------------------------------------------------- a drift whose cycle is known
def _cycling_model(embedder, words: list[str]) -> tuple[TextSDE, list[int]]:
    """An untrained model whose drift is replaced by a hand-built one: from the embedding of
    words[i] one noiseless step lands exactly on words[i + 1] (cyclically), from anywhere else on
    words[0]. With snapping, the drift-only text is words[0], words[1], ... round and round."""
    torch.manual_seed(0)
    model = TextSDE(ModelConfig(drift_hidden=16, diffusion_hidden=16, readout_hidden=16), embedder).eval()
    ids = [embedder.encode(w)[0] for w in words]
    assert len(set(ids)) == len(words)
    targets = model.token_states(torch.tensor(ids))
    nxt = torch.roll(targets, -1, dims=0)
    dt = model.config.dt

    def mu(z, x, net_out=None):
        dist = torch.cdist(x, targets)
        near, which = dist.min(-1)
        goal = torch.where((near < 1e-3)[:, None], nxt[which], targets[0].expand_as(x))
        return (goal - x) / dt

    model._mu = mu
    return model, ids


def test_the_attractor_of_a_hand_built_drift_is_its_cycle(embedder):
    words = ["river", "stone", "cloud"]
    model, ids = _cycling_model(embedder, words)
    a = interpret.drift_attractor(model, embedder, "hello there", tokens=24, paths=4, scales=(0.01, 0.5, 10.0),
                                  refine=2)
    assert a.kind == "cycle" and a.period == 3 and a.start == 0
    assert a.cycle == words and a.cycle_ids == ids
    assert a.drift_text[:6] == words * 2
    # a whisper of noise keeps every path on the cycle; at s = 10 the decoded tokens are noise
    assert a.escaped[a.scales.index(0.01)] == 0.0 and a.same_cycle[a.scales.index(0.01)] == 1.0
    assert a.escaped[a.scales.index(10.0)] >= 0.5
    assert a.escape_scale is not None and 0.01 < a.escape_scale <= 10.0
    assert all(e >= 0.5 for s, e in zip(a.scales, a.escaped) if s >= a.escape_scale)
    assert any(e < 0.5 for s, e in zip(a.scales, a.escaped) if s < a.escape_scale)


def test_a_drift_without_a_loop_has_no_attractor(embedder):
    words = ["river", "stone", "cloud", "apple", "music", "window", "garden", "letter", "bridge", "candle"]
    model, _ = _cycling_model(embedder, words)
    a = interpret.drift_attractor(model, embedder, "hello there", tokens=12)
    assert a.kind == "none" and a.period is None and a.scales == [] and a.escape_scale is None
    assert a.drift_text == words + words[:2]


# ----------------------------------------------------------------------------- the trained model
def test_token_diffusion_is_sigma_at_the_tokens_own_state(tiny_model):
    model = tiny_model.model
    ids = torch.tensor([2023, 2003, 1037])
    got = interpret.token_diffusion(model, ids, chunk=2)
    x = model.token_states(ids)
    with torch.no_grad():
        want = model.sigma(x, x.new_zeros(3, model.config.memory_dim), 0.0).pow(2).mean(-1).sqrt()
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)
    # the state of a one-token text is the one the sampler starts from
    y = model.prompt_state([2023])
    np.testing.assert_array_equal(y[0, model.dim:].numpy(), 0.0)


def test_diffusion_ranking_orders_frequent_tokens(tiny_model):
    r = interpret.diffusion_ranking(tiny_model.model, tiny_model.embedder, among=200, top=5)
    least, most = [row["sigma"] for row in r["least"]], [row["sigma"] for row in r["most"]]
    assert least == sorted(least) and most == sorted(most, reverse=True)
    assert least[0] == pytest.approx(r["sigma"].min()) and most[0] == pytest.approx(r["sigma"].max())
    assert r["among"] == 200 and len(r["sigma"]) == 200


def test_text_steps_point_where_one_noiseless_step_lands(tiny_model):
    model, emb = tiny_model.model, tiny_model.embedder
    text = "the cat sat on the mat"
    st = interpret.text_steps(model, emb, text, top=3)
    ids = emb.encode(text)
    assert st.tokens == emb.tokens(ids) and st.sigma.shape == (len(ids),) and st.next_probs.shape == (len(ids), 3)
    assert np.all(np.diff(st.next_probs, axis=1) <= 0)
    # the last position's first choice is the token the drift-only sampler emits after the text
    run = simulate_paths(model, emb, text, paths=1, tokens=1, diffusion_scale=0.0)
    assert st.next_tokens[-1][0] == emb.tokens(run.continuation(0))[0]
    with pytest.raises(ValueError):
        interpret.text_steps(model, emb, "   ")


def test_compare_scales_replays_one_brownian_path(tiny_model):
    model, emb = tiny_model.model, tiny_model.embedder
    cmp = interpret.compare_scales(model, emb, "the cat", [0.5, 2.0], paths=3, tokens=6, seed=4)
    alone = simulate_paths(model, emb, "the cat", paths=3, tokens=6, diffusion_scale=2.0, seed=4)
    assert torch.equal(cmp.runs[1].token_ids, alone.token_ids)
    drift = simulate_paths(model, emb, "the cat", paths=1, tokens=6, diffusion_scale=0.0)
    assert torch.equal(cmp.drift.token_ids, drift.token_ids)
    for run, first, share in zip(cmp.runs, cmp.first, cmp.share):
        np.testing.assert_array_equal(first, interpret.departures(run.token_ids.numpy(), drift.token_ids[0].numpy()))
        assert share.shape == (6,) and np.all(np.diff(share) >= 0)
