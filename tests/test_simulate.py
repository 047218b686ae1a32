"""Sample paths of a (small, trained) text SDE: determinism, one Brownian path for every
scale and solver, em == torchsde euler, divergence handling."""

import pytest
import torch

from sdecore import path_texts, simulate_paths
from sdecore.simulate import check_prompt

PROMPT = "How can I sleep better?"


def _sim(ck, **kw):
    args = {"paths": 4, "tokens": 8, "diffusion_scale": 1.0, "seed": 3}
    args.update(kw)
    return simulate_paths(ck.model, ck.embedder, PROMPT, **args)


def test_same_seed_same_paths_and_text(tiny_model):
    a, b = _sim(tiny_model), _sim(tiny_model)
    assert torch.equal(a.token_ids, b.token_ids)
    assert path_texts(tiny_model.embedder, a) == path_texts(tiny_model.embedder, b)
    assert (a.token_ids >= 0).all() and not a.diverged.any()


def test_scale_zero_is_deterministic_across_paths(tiny_model):
    r = _sim(tiny_model, diffusion_scale=0.0, paths=5)
    assert (r.token_ids == r.token_ids[0]).all()


def test_noise_makes_paths_differ(tiny_model):
    r = _sim(tiny_model, diffusion_scale=2.0, paths=6, record_states=True)
    first = r.states[:, 1]
    assert torch.cdist(first, first).add(torch.eye(6) * 1e9).min() > 1e-3  # six distinct states


def test_never_emits_special_tokens(tiny_model):
    r = _sim(tiny_model, diffusion_scale=3.0, paths=8, tokens=12)
    support = tiny_model.embedder.support_mask
    assert support[r.token_ids[r.token_ids >= 0]].all()


@pytest.mark.parametrize("snap", [True, False])
@pytest.mark.parametrize("substeps", [1, 3])
def test_em_matches_torchsde_euler(tiny_model, snap, substeps):
    a = _sim(tiny_model, solver="em", snap=snap, substeps=substeps, record_states=True)
    b = _sim(tiny_model, solver="euler", snap=snap, substeps=substeps, record_states=True)
    torch.testing.assert_close(a.states, b.states, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert torch.equal(a.token_ids, b.token_ids)


def test_scale_bends_one_brownian_path(tiny_model):
    """Without snapping, x(s) - x(0) after one step is s * sigma * dW: linear in s, so the
    same noise is read at every scale."""
    r0 = _sim(tiny_model, diffusion_scale=0.0, snap=False, tokens=1, record_states=True)
    r1 = _sim(tiny_model, diffusion_scale=0.5, snap=False, tokens=1, record_states=True)
    r2 = _sim(tiny_model, diffusion_scale=1.0, snap=False, tokens=1, record_states=True)
    d1 = r1.states[:, 1] - r0.states[:, 1]
    d2 = r2.states[:, 1] - r0.states[:, 1]
    torch.testing.assert_close(d2, 2 * d1, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("solver", ["milstein", "srk"])
def test_other_solvers_run_and_agree_at_scale_zero_start(tiny_model, solver):
    r = _sim(tiny_model, solver=solver, tokens=4)
    assert r.token_ids.shape == (4, 4) and (r.token_ids >= 0).all()
    ref = _sim(tiny_model, solver="euler", tokens=4, snap=False, record_states=True)
    got = _sim(tiny_model, solver=solver, tokens=4, snap=False, record_states=True)
    fresh = _sim(tiny_model, solver="euler", tokens=4, snap=False, record_states=True, seed=13)
    # one noise path: the solvers differ by their higher-order terms (large at one step of dt = 1
    # for srk, about half of what fresh noise makes), not by fresh noise
    gap = (got.states[:, 1] - ref.states[:, 1]).norm()
    assert gap < 0.6 * (fresh.states[:, 1] - ref.states[:, 1]).norm()


def test_divergence_is_flagged_and_others_go_on(tiny_model):
    model = tiny_model.model
    free = _sim(tiny_model, diffusion_scale=2.0, paths=16, tokens=10, snap=False, record_states=True)
    peak = free.states[:, 1:].norm(dim=-1).nan_to_num(float("inf")).amax(dim=1)
    old = model.config.divergence_radius
    try:  # a bound that half of the same Brownian paths cross
        model.config.divergence_radius = float(peak.median()) / float(model.cloud_radius)
        r = _sim(tiny_model, diffusion_scale=2.0, paths=16, tokens=10, snap=False)
    finally:
        model.config.divergence_radius = old
    assert r.diverged.any() and not r.diverged.all()
    for i in torch.nonzero(r.diverged).flatten():
        k = int(r.diverged_at[i])
        assert (r.token_ids[i, k:] == -1).all() and (r.token_ids[i, :k] >= 0).all()
    assert (r.token_ids[~r.diverged] >= 0).all()


def test_nan_drift_stops_every_path_without_crashing(tiny_model):
    model = tiny_model.model
    bias = model.drift_net[-1].bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.fill_(float("nan"))
    try:
        r = _sim(tiny_model, tokens=5)
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert r.diverged.all() and (r.diverged_at == 0).all() and (r.token_ids == -1).all()
    assert [p["text"] for p in path_texts(tiny_model.embedder, r)] == [""] * 4


def test_long_prompts_are_cut_with_a_warning(embedder, caplog):
    ids = check_prompt(embedder, "word " * 700)
    assert len(ids) == 512 and "last 512" in caplog.text


@pytest.mark.parametrize("kw,msg", [
    ({"paths": 0}, "--paths"), ({"tokens": 513}, "--tokens"), ({"diffusion_scale": float("nan")}, "finite"),
    ({"diffusion_scale": 10.5}, "--diffusion-scale"), ({"substeps": 65}, "--substeps"),
    ({"solver": "rk4"}, "--solver"), ({"seed": -1}, "--seed"), ({"temperature": float("nan")}, "--temperature"),
])
def test_bad_arguments_raise_value_error(tiny_model, kw, msg):
    with pytest.raises(ValueError, match=msg):
        _sim(tiny_model, **kw)


def test_empty_prompt(tiny_model):
    with pytest.raises(ValueError, match="prompt is empty"):
        simulate_paths(tiny_model.model, tiny_model.embedder, "   ")


def test_a_token_never_follows_itself(tiny_model):
    r = _sim(tiny_model, diffusion_scale=0.0, paths=2, tokens=12)
    ids = torch.cat([torch.full((2, 1), r.prompt_ids[-1]), r.token_ids], dim=1)
    assert not (ids[:, 1:] == ids[:, :-1]).any()


def test_a_tiny_temperature_samples_like_greedy(tiny_model):
    greedy = _sim(tiny_model, tokens=4)
    tiny = _sim(tiny_model, tokens=4, temperature=1e-30)
    assert torch.equal(greedy.token_ids, tiny.token_ids)


def test_the_prompt_state_is_the_teacher_forced_memory_at_its_last_token(tiny_model):
    model = tiny_model.model
    for ids in ([2023], [2023, 2003], tiny_model.embedder.encode(PROMPT * 20)):
        xs = model.token_states(torch.tensor(ids)).unsqueeze(0)
        want = torch.cat([xs[:, -1], model.teacher_forced_memory(xs)[:, -1]], dim=-1)
        assert torch.equal(model.prompt_state(ids), want)


def test_the_inference_nets_give_the_modules_values(tiny_model, monkeypatch):
    """Sampling runs the drift and diffusion nets as plain functions (one row) or through oneDNN's
    packed product (more rows): the modules' own values, exactly and to float rounding."""
    model = tiny_model.model.eval()
    g = torch.Generator().manual_seed(0)
    x, h = torch.randn(5, model.dim, generator=g), torch.randn(5, model.config.memory_dim, generator=g)
    z = model._features(x, h, torch.tensor(3.0))
    with torch.no_grad():
        for name in ("drift_net", "diffusion_net"):
            net = getattr(model, name)
            assert torch.equal(model._net(name, z[:1]), net(z[:1]))
            torch.testing.assert_close(model._net(name, z), net(z), rtol=1e-5, atol=1e-5)
            monkeypatch.setenv("SDECORE_ONEDNN", "0")
            assert torch.equal(model._net(name, z), net(z))
            monkeypatch.delenv("SDECORE_ONEDNN")
        model._net("drift_net", z)  # packed now
        bias = model.drift_net[0].bias
        saved = bias.clone()
        try:
            bias.add_(1.0)  # a changed parameter repacks
            torch.testing.assert_close(model._net("drift_net", z), model.drift_net(z), rtol=1e-5, atol=1e-5)
        finally:
            bias.copy_(saved)  # the session's shared model, as it was


def test_recorded_drift_and_sigma_are_the_nets_at_the_recorded_states(tiny_model):
    r = _sim(tiny_model, diffusion_scale=1.5, tokens=5, snap=True, record_states=True)
    model = tiny_model.model
    with torch.no_grad():
        for k in (0, 3, 5):
            t = r.times[k]
            torch.testing.assert_close(r.drift[:, k], model.drift(r.states[:, k], r.memory[:, k], t))
            torch.testing.assert_close(r.sigma2[:, k], model.sigma(r.states[:, k], r.memory[:, k], t).pow(2).sum(-1))


def _same_paths(a, b, exact_probs: bool = False) -> None:
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.diverged_at, b.diverged_at)
    if exact_probs:
        assert torch.equal(a.probs, b.probs)
    else:
        torch.testing.assert_close(a.probs, b.probs, rtol=1e-6, atol=1e-7)
    for name in ("states", "memory", "drift", "sigma2"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None)
        if x is not None:
            assert torch.equal(torch.nan_to_num(x, nan=7.0), torch.nan_to_num(y, nan=7.0)), name


def test_runs_simulated_together_give_what_each_gives_alone(tiny_model):
    """Requests of every shape in one lockstep batch: prompts, path counts (one included), lengths,
    scales, seeds, substeps, snapping, a temperature and a run whose paths diverge."""
    from sdecore.simulate import SampleRequest, simulate_requests

    reqs = [SampleRequest(PROMPT, paths=4, tokens=8, diffusion_scale=1.0, seed=3, record_states=True),
            SampleRequest("Why is the sky blue at noon?", paths=1, tokens=5, diffusion_scale=0.5, seed=1),
            SampleRequest("hi", paths=3, tokens=12, diffusion_scale=2.0, seed=9, snap=False, record_states=True),
            SampleRequest(PROMPT, paths=6, tokens=6, diffusion_scale=0.0, seed=4, substeps=2),
            SampleRequest("Tell me a story.", paths=2, tokens=7, diffusion_scale=1.5, seed=5, temperature=0.7),
            SampleRequest(PROMPT, paths=5, tokens=10, diffusion_scale=10.0, seed=6, snap=False, substeps=3)]
    model = tiny_model.model
    old = model.config.divergence_radius
    try:  # a bound that the scale-10 unsnapped paths cross
        model.config.divergence_radius = 1.5
        together = simulate_requests(model, tiny_model.embedder, reqs)
        alone = [simulate_requests(model, tiny_model.embedder, [r])[0] for r in reqs]
    finally:
        model.config.divergence_radius = old
    for got, want in zip(together, alone):
        _same_paths(got, want, exact_probs=True)
    assert together[-1].diverged.any(), "the scale-10 unsnapped run should lose paths"
    single = simulate_paths(tiny_model.model, tiny_model.embedder, PROMPT, paths=4, tokens=8, diffusion_scale=1.0,
                            seed=3, record_states=True)
    _same_paths(together[0], single)


@pytest.mark.parametrize("onednn", ["1", "0"])
def test_a_batch_across_a_decode_block_boundary_is_exact(tiny_model, monkeypatch, onednn):
    """255 + 2 paths: the batch's decode ends in a block that would hold one row (the plain kernel,
    rounding differently); and without oneDNN the runs go one at a time. Either way: as alone."""
    from sdecore.simulate import SampleRequest, simulate_requests

    monkeypatch.setenv("SDECORE_ONEDNN", onednn)
    model = tiny_model.model
    model.emission._packs.clear()
    model.__dict__.pop("_inference_nets", None)
    reqs = [SampleRequest(PROMPT, paths=255, tokens=3, diffusion_scale=1.0, seed=2, snap=False, record_states=True),
            SampleRequest("Why is the sky blue?", paths=2, tokens=4, diffusion_scale=1.0, seed=5, snap=False,
                          record_states=True)]
    try:
        together = simulate_requests(model, tiny_model.embedder, reqs)
        alone = [simulate_requests(model, tiny_model.embedder, [r])[0] for r in reqs]
        assert model.batches_exactly() == (onednn == "1")
    finally:
        model.emission._packs.clear()
        model.__dict__.pop("_inference_nets", None)
    for got, want in zip(together, alone):
        _same_paths(got, want, exact_probs=True)


def test_no_request_gives_no_paths(tiny_model):
    from sdecore.simulate import simulate_requests

    assert simulate_requests(tiny_model.model, tiny_model.embedder, []) == []


def test_only_em_runs_share_a_batch(tiny_model):
    from sdecore.simulate import SampleRequest, simulate_requests

    with pytest.raises(ValueError, match="only em runs"):
        simulate_requests(tiny_model.model, tiny_model.embedder,
                          [SampleRequest(PROMPT, solver="euler"), SampleRequest(PROMPT)])
    with pytest.raises(ValueError, match="paths"):
        simulate_requests(tiny_model.model, tiny_model.embedder, [SampleRequest(PROMPT, paths=0)])


@pytest.mark.parametrize("solver", ["em", "euler", "srk"])
def test_at_scale_zero_every_seed_gives_the_same_path(tiny_model, solver):
    """The dashboard shares one drift-only run across seeds: at s = 0 the noise is multiplied by
    zero, exactly."""
    a = _sim(tiny_model, diffusion_scale=0.0, paths=1, seed=0, solver=solver, record_states=True)
    b = _sim(tiny_model, diffusion_scale=0.0, paths=1, seed=12345, solver=solver, record_states=True)
    _same_paths(a, b)


def test_a_few_rows_run_on_one_thread_only_under_passive_waiting(monkeypatch):
    from sdecore.onednn import FEW_ROWS, serial_if_few

    if torch.get_num_threads() < 2:
        pytest.skip("one intra-op thread here: there is nothing to reduce")
    n, cpu = torch.get_num_threads(), torch.device("cpu")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("SDECORE_FEW_ROWS_SERIAL", "1")  # as where one thread wins the probe
    with serial_if_few(FEW_ROWS - 1, cpu):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == n
    with serial_if_few(FEW_ROWS, cpu):
        assert torch.get_num_threads() == n
    with pytest.raises(RuntimeError), serial_if_few(2, cpu):  # restored when the work fails too
        raise RuntimeError("boom")
    assert torch.get_num_threads() == n
    with serial_if_few(2, torch.device("cuda")):  # a GPU's work: nothing to change
        assert torch.get_num_threads() == n
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    with serial_if_few(2, cpu):
        assert torch.get_num_threads() == n
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("SDECORE_FEW_ROWS_SERIAL", "0")  # as where every thread wins it
    with serial_if_few(2, cpu):
        assert torch.get_num_threads() == n


def test_the_one_thread_rule_follows_the_machine_s_probe(monkeypatch):
    """Without SDECORE_FEW_ROWS_SERIAL the rule holds where one thread won the probe of few-row
    work, measured once per thread count; the probe leaves the thread count as it found it."""
    from sdecore import onednn

    n = torch.get_num_threads()
    one, every = onednn.probe_few_rows(rounds=2)
    assert one > 0 and every > 0 and torch.get_num_threads() == n
    monkeypatch.delenv("SDECORE_FEW_ROWS_SERIAL", raising=False)
    monkeypatch.setattr(onednn, "_serial_pays", {})
    calls = []
    for answer, serial in (((1.0, 2.0), True), ((2.0, 1.0), False)):
        monkeypatch.setattr(onednn, "_serial_pays", {})
        monkeypatch.setattr(onednn, "probe_few_rows", lambda a=answer: calls.append(a) or a)
        assert onednn.serial_pays() is serial and onednn.serial_pays() is serial
    assert len(calls) == 2  # once per process and thread count
    monkeypatch.setenv("SDECORE_FEW_ROWS_SERIAL", "1")
    assert onednn.serial_pays() is True


@pytest.mark.parametrize("solver, temperature", [("em", 0.0), ("euler", 0.0), ("em", 0.7)])
def test_one_thread_at_a_few_rows_gives_the_same_paths(tiny_model, monkeypatch, solver, temperature):
    """The sampler at a few rows on one thread (passive waiting) and on all of them: the same
    states, tokens and probabilities to the bit."""
    if torch.get_num_threads() < 2:
        pytest.skip("one intra-op thread here: both runs would use it")
    model, seen = tiny_model.model, []
    net = model._net
    monkeypatch.setattr(model, "_net", lambda name, z: seen.append(torch.get_num_threads()) or net(name, z))
    runs = {}
    monkeypatch.setenv("SDECORE_FEW_ROWS_SERIAL", "1")  # the rule on, whatever this machine's probe says
    for policy in ("PASSIVE", "ACTIVE"):
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
        seen.clear()
        runs[policy] = _sim(tiny_model, paths=3, tokens=10, solver=solver, temperature=temperature,
                            record_states=True)
        assert (1 in seen) == (policy == "PASSIVE")
    _same_paths(runs["PASSIVE"], runs["ACTIVE"], exact_probs=True)


def test_the_inference_buffers_worked_in_place_hold_the_same_values(tiny_model):
    """Without gradients the nets' bounded input and the memory's rate are made in place in one
    buffer each: the values of the out-of-place forms (with gradients) to the bit, inputs untouched."""
    model = tiny_model.model.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, model.dim, generator=g) * 3
    h = torch.randn(5, model.config.memory_dim, generator=g) * 3
    keep = (x.clone(), h.clone())
    with torch.no_grad():
        z0, r0 = model._features(x, h, 2.0), model.memory_rate(x, h)
    z1, r1 = model._features(x, h, 2.0), model.memory_rate(x, h)
    assert torch.equal(z0, z1) and torch.equal(r0, r1)
    assert torch.equal(x, keep[0]) and torch.equal(h, keep[1])


def test_a_run_can_be_cancelled_between_tokens(tiny_model):
    from sdecore.simulate import Cancelled, SampleRequest, simulate_requests

    asked = []

    def cancel():
        asked.append(1)
        return len(asked) > 3

    with pytest.raises(Cancelled, match="before token 4"):
        simulate_requests(tiny_model.model, tiny_model.embedder,
                          [SampleRequest("How can I sleep better?", paths=3, tokens=8)], cancel=cancel)
    done = simulate_requests(tiny_model.model, tiny_model.embedder,
                             [SampleRequest("How can I sleep better?", paths=3, tokens=8)], cancel=lambda: False)
    assert done[0].token_ids.shape == (3, 8)


@pytest.mark.parametrize("solver, substeps", [("em", 2), ("euler", 1), ("srk", 1)])
def test_a_bounded_brownian_cache_gives_the_same_paths(tiny_model, monkeypatch, solver, substeps):
    """The Brownian path's cache of recent increments held to a few entries (as a big run's is, to
    bound its memory) changes nothing: dropped intervals are drawn again from their own seeds. The
    run is long enough (80 tokens: more steps than one piece of torchsde's dependency tree) for
    intervals to be dropped and drawn again, which the count of normal draws shows."""
    import torchsde._brownian.brownian_interval as bi

    import sdecore.simulate as S

    draws = []
    randn = bi._randn
    monkeypatch.setattr(bi, "_randn", lambda *a: draws.append(1) or randn(*a))
    full = _sim(tiny_model, paths=2, tokens=80, solver=solver, substeps=substeps, record_states=True)
    n_full = len(draws)
    monkeypatch.setattr(S, "BROWNIAN_CACHE_BYTES", 1)
    bm = S.brownian_path(0.0, 1.0, 3, 16, 0.05, 0, torch.device("cpu"))
    assert bm._increment_and_space_time_levy_area_cache._max_size == 4  # the bound took hold
    draws.clear()
    bounded = _sim(tiny_model, paths=2, tokens=80, solver=solver, substeps=substeps, record_states=True)
    assert len(draws) > n_full  # intervals were dropped and drawn again
    _same_paths(full, bounded, exact_probs=True)
