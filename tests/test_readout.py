"""The emission's read-out (docs/design.md §2.4) and a continuation's first token (§3)."""

from __future__ import annotations

import pytest
import torch

from sdecore import ModelConfig, interpret, simulate_paths
from sdecore.config import ModelConfig as Config
from sdecore.evaluate import ContinuousFits, predict_step
from sdecore.model import TextSDE
from sdecore.simulate import SampleRequest, simulate_requests
from sdecore.tokendata import WindowBatch


def _model(embedder, readout: int = 16, seed: int = 0) -> TextSDE:
    torch.manual_seed(seed)
    return TextSDE(ModelConfig(drift_hidden=16, diffusion_hidden=16, readout_hidden=readout), embedder).eval()


def _states(model, n=6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, model.dim, generator=gen)
    h = torch.randn(n, model.config.memory_dim, generator=gen)
    return x, h, torch.arange(n, dtype=torch.float32)


def _shift_towards(model, embedder, word: str, size: float = 60.0) -> int:
    """Make the read-out's shift a constant pointing far along ``word``'s embedding."""
    (v,) = embedder.encode(word)
    with torch.no_grad():
        model.readout_net[-1].bias.copy_(size * model.token_states(torch.tensor(v)))
    return v


def test_the_readout_starts_as_the_plain_read_out(embedder):
    model = _model(embedder)
    x, h, t = _states(model)
    mu, sigma, read = model.next_token_mean(x, h, t)
    torch.testing.assert_close(read, x + mu * model.config.dt, rtol=0, atol=0)
    torch.testing.assert_close(mu, model.drift(x, h, t))
    torch.testing.assert_close(sigma, model.sigma(x, h, t))
    assert _model(embedder, readout=0).readout_shift(torch.zeros(2, 2689)) is None


def test_a_checkpoint_from_before_the_readout_loads_without_one(embedder, tmp_path):
    from sdecore import checkpoint as ckio
    from sdecore import load_checkpoint

    old = _model(embedder, readout=0)
    cfg = ckio.checkpoint_config(old.config, embedder)
    del cfg["model"]["readout_hidden"]  # as written before the read-out existed
    ckio.write_json(tmp_path / ckio.CONFIG, cfg)
    ckio.write_tensors(tmp_path / ckio.WEIGHTS, old.state_dict())
    ck = load_checkpoint(tmp_path, embedder=embedder)
    assert ck.model.config.readout_hidden == 0 and not ck.model.has_readout
    assert simulate_paths(ck.model, embedder, "hello there", paths=2, tokens=3).token_ids.shape == (2, 3)
    with pytest.raises(ValueError, match="readout_hidden"):
        Config(readout_hidden=-1).validate()


def _ce_grads(model, **kw):
    model.train()
    x, h, t = _states(model, n=8)
    v_next = torch.arange(2000, 2008)
    parts = model(x, h, t, model.token_states(v_next), v_next, **kw)
    model.zero_grad()
    parts["ce"].backward()
    return {n: (p.grad.abs().sum().item() if p.grad is not None else 0.0) for n, p in model.named_parameters()}


def test_the_cross_entropy_trains_the_readout_not_the_drift(embedder):
    model = _model(embedder)
    with torch.no_grad():  # a nonzero read-out, so its earlier layers get a gradient too
        model.readout_net[-1].weight.normal_(0, 0.1)
    grads = _ce_grads(model)
    assert all(g == 0 for n, g in grads.items() if n.startswith(("drift_net", "reversion", "diffusion_net")))
    assert all(g > 0 for n, g in grads.items() if n.startswith("readout_net"))
    assert grads["emission.log_tau"] > 0
    # without a read-out, or asked to (the ablation), the cross-entropy reaches the drift; never sigma
    for grads in (_ce_grads(_model(embedder, readout=0)), _ce_grads(model, ce_trains_drift=True)):
        assert grads["drift_net.0.weight"] > 0 and grads["reversion"] > 0 and grads["diffusion_net.0.weight"] == 0


def test_the_decode_reads_the_shifted_state_and_the_path_stays_the_drifts(embedder):
    model, plain = _model(embedder), _model(embedder, readout=0)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("readout_net")})
    v = _shift_towards(model, embedder, "river")
    for solver in ("em", "euler"):
        args = {"paths": 3, "tokens": 4, "diffusion_scale": 0.5, "seed": 2, "solver": solver, "snap": False,
                "record_states": True}
        shifted = simulate_paths(model, embedder, "the weather today", **args)
        alone = simulate_paths(plain, embedder, "the weather today", **args)
        # the SDE's path is the drift's and sigma's, whatever the read-out
        torch.testing.assert_close(shifted.states, alone.states, rtol=1e-5, atol=1e-5)
        # tokens are read far along "river": it is emitted whenever the path is not already on it
        ids = shifted.token_ids
        assert (ids[:, 0] == v).all() and (ids[:, 1] != v).all() and (ids[:, 2] == v).all()
        assert not torch.equal(ids, alone.token_ids)


def test_runs_with_a_readout_batch_exactly_as_alone(embedder):
    model = _model(embedder)
    with torch.no_grad():
        model.readout_net[-1].weight.normal_(0, 0.5)
    assert model.batches_exactly()
    reqs = [SampleRequest("a short prompt", paths=3, tokens=5, diffusion_scale=1.0, seed=4),
            SampleRequest("another one here", paths=2, tokens=5, diffusion_scale=0.3, seed=5, substeps=2)]
    together = simulate_requests(model, embedder, reqs)
    for req, got in zip(reqs, together):
        (alone,) = simulate_requests(model, embedder, [req])
        assert torch.equal(got.token_ids, alone.token_ids)
        assert torch.equal(got.probs, alone.probs)


def _drift_onto(model, v: int) -> None:
    """Replace the drift by one whose noiseless step lands on token ``v`` from anywhere."""
    target = model.token_states(torch.tensor(v))

    def mu(z, x, net_out=None):
        return (target - x) / model.config.dt

    model._mu = mu


def test_a_continuation_never_starts_with_a_word_piece(embedder):
    model = _model(embedder, readout=0)
    v = embedder.encode("hii")[1]  # "hi", "##i"
    assert embedder.tokens([v])[0].startswith("##")
    _drift_onto(model, v)
    mask = embedder.continuation_mask
    assert mask[v] and not mask[embedder.encode("hi")[0]] and 1000 < int(mask.sum()) < 10000
    for kw in ({"solver": "em"}, {"solver": "euler"}, {"temperature": 0.5}, {"paths": 1}):
        r = simulate_paths(model, embedder, "hi", **{"paths": 2, "tokens": 3, "diffusion_scale": 0.0, **kw})
        first, second = r.token_ids[:, 0], r.token_ids[:, 1]
        assert not mask[first].any(), kw
        assert (second == v).all(), kw  # later, the model's word piece is emitted
    # the drift's next tokens after a whole text start a word too; inside the text they need not
    steps = interpret.text_steps(model, embedder, "hi there friend", top=5)
    assert not any(tok.startswith("##") for tok in steps.next_tokens[-1])
    assert steps.next_tokens[0][0] == embedder.tokens([v])[0]


def test_the_evaluation_reads_the_sde_through_its_readout(embedder):
    model = _model(embedder)
    _shift_towards(model, embedder, "river", size=3.0)
    x, h, t = _states(model)
    batch = WindowBatch(x=x, h=h, t=t, x_next=x, v_next=torch.zeros(6, dtype=torch.long),
                        v=torch.zeros(6, dtype=torch.long))
    ones = torch.ones(model.dim)
    fits = ContinuousFits(brownian_var=ones, ar1_a=torch.eye(model.dim), ar1_b=0 * ones, ar1_var=ones, drift_var=ones)
    sde = predict_step(model, batch, "sde", fits)
    mu, _, read = model.next_token_mean(x, h, t)
    torch.testing.assert_close(sde.mean, x + mu)  # the increments are scored at the drift's mean
    torch.testing.assert_close(sde.read_mean, read)  # the tokens at the read-out's
    assert predict_step(model, batch, "drift_only", fits).read is None


def test_only_a_wordpiece_tokenizer_has_continuation_pieces():
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    from sdecore import Embedder

    vocab = {"a": 0, "b": 1, "##a": 2, "ab": 3}
    bpe = Embedder("bpe", Tokenizer(BPE(vocab=vocab, merges=[("a", "b")])), torch.zeros(4, 8), set())
    assert not bpe.continuation_mask.any()  # "##a" is an ordinary token to a BPE tokenizer


@torch.no_grad()
def test_each_token_is_read_at_the_new_state_plus_the_shift_at_the_steps_start(embedder):
    """With a read-out that depends on the state, the decoded tokens are exactly the emission's
    at x_{k+1} + r(z_k): z at the step's start, not at its end."""
    model = _model(embedder)
    model.readout_net[-1].weight.normal_(0, 2.0)
    prompt = "the weather today"
    for solver in ("em", "euler"):
        r = simulate_paths(model, embedder, prompt, paths=3, tokens=5, diffusion_scale=0.5, seed=2, solver=solver,
                           snap=False, record_states=True)
        last = torch.full((3,), embedder.encode(prompt)[-1])
        starts, ends = [], []
        for k in range(5):
            x, h = r.states[:, k], r.memory[:, k]
            shift = model.readout_shift(model._features(x, h, r.times[k]))
            banned = embedder.continuation_mask if k == 0 else None
            v, _ = model.emission.decode(r.states[:, k + 1] + shift, exclude=last, banned=banned)
            starts.append(torch.equal(v, r.token_ids[:, k]))
            at_end = model.readout_shift(model._features(r.states[:, k + 1], r.memory[:, k + 1], r.times[k + 1]))
            ends.append(torch.equal(model.emission.decode(r.states[:, k + 1] + at_end, exclude=last,
                                                          banned=banned)[0], r.token_ids[:, k]))
            last = r.token_ids[:, k]
        assert all(starts), solver
        assert not all(ends), solver  # the shift at the step's end would read other tokens
