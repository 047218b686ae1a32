"""The Gaussian emission's closed form and its read-outs, on a small hand-made table."""

import math

import pytest
import torch

from sdecore import losses, onednn
from sdecore.emission import GaussianEmission, row_max_argmax

# 5 tokens in 2-D; id 0 is a special token (outside the support)
TABLE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0]])
SUPPORT = torch.tensor([False, True, True, True, True])
PRIOR = torch.log(torch.tensor([0.0, 0.1, 0.4, 0.3, 0.2]).clamp_min(1e-30))


def emission() -> GaussianEmission:
    return GaussianEmission(TABLE, SUPPORT, PRIOR, tau_init=1.0)


def test_logits_equal_the_gaussian_log_density_plus_the_prior():
    em = emission()
    mean, var = torch.tensor([[0.5, 0.5]]), torch.tensor([0.5, 2.0])
    got = torch.log_softmax(em.logits(mean, var), -1)[0]
    dens = -0.5 * ((TABLE - mean) ** 2 / var).sum(-1) + PRIOR  # up to a constant shared by every token
    want = torch.log_softmax(dens.masked_fill(~SUPPORT, -math.inf), -1)
    torch.testing.assert_close(got, want)
    assert got[0] == -math.inf


def test_nearest_tokens_skip_specials_and_mark_non_finite_rows():
    em = emission()
    points = torch.tensor([[0.1, 0.0], [0.9, 0.2], [-2.0, 0.1], [0.0, 5.0], [math.nan, 0.0]])
    # (0.1, 0) is nearest to the special token 0, so the nearest emittable one, 1, is taken
    assert em.nearest_tokens(points).tolist() == [1, 1, 3, 2, -1]


def test_frequent_tokens_follow_the_prior_and_skip_specials():
    assert emission().frequent_tokens(3).tolist() == [2, 3, 4]


def test_decoding_keeps_its_bias_only_while_the_parameters_stay():
    em = emission()
    x = torch.tensor([[0.9, 0.1], [0.1, 1.8], [-2.0, 0.3]])
    same = torch.testing.assert_close  # the decode's product may run through another kernel
    with torch.no_grad():
        same(em.state_logits(x), em.logits(x, em.tau2))
        em.log_tau.add_(0.7)  # an optimiser step or a loaded checkpoint changes them in place
        em.prior_weight.mul_(0.2)
        same(em.state_logits(x), em.logits(x, em.tau2))
        em.load_state_dict({**em.state_dict(), "log_prior": torch.zeros(5)})
        same(em.state_logits(x), em.logits(x, em.tau2))


def test_decoding_in_blocks_gives_the_rows_decoded_at_once():
    em = emission()
    x = torch.randn(11, 2, generator=torch.Generator().manual_seed(0))
    exclude = torch.randint(1, 5, (11,), generator=torch.Generator().manual_seed(1))
    ids, probs = em.decode(x, exclude=exclude)
    ids3, probs3 = em.decode(x, exclude=exclude, block=3)
    assert torch.equal(ids, ids3) and torch.allclose(probs, probs3)
    logp = torch.log_softmax(em.state_logits(x).scatter(-1, exclude[:, None], -math.inf), -1)
    assert torch.equal(ids, logp.argmax(-1)) and not (ids == exclude).any()
    torch.testing.assert_close(probs, logp.gather(-1, ids[:, None]).squeeze(-1).exp())


@pytest.mark.parametrize("n", [7, 512, 1024, 1500, 30522])
def test_row_max_argmax_is_max_ties_and_short_last_chunk_included(n):
    g = torch.Generator().manual_seed(n)
    logits = torch.randn(40, n, generator=g).round(decimals=1)  # many ties; enough rows for chunks
    logits[1, -1] = 50.0  # the maximum in the last, short chunk
    logits[2, :] = 3.0  # every column tied
    logits[3, n // 2] = logits[3, n - 1] = 60.0  # two chunks holding the maximum
    logits[4, 0] = float("-inf")
    top, idx = row_max_argmax(logits)
    want = logits.max(-1)
    assert torch.equal(top, want.values) and torch.equal(idx, want.indices)


def test_the_decode_product_matches_addmm_with_and_without_onednn(monkeypatch):
    g = torch.Generator().manual_seed(0)
    table = torch.randn(3000, 48, generator=g)
    em = GaussianEmission(table, torch.ones(3000, dtype=torch.bool), tau_init=2.0)
    x = torch.randn(37, 48, generator=g)
    with torch.no_grad():
        want = em.logits(x, em.tau2)
        fast = em.state_logits(x)
        monkeypatch.setenv("SDECORE_ONEDNN", "0")
        em._packs.clear()  # packed again, now without oneDNN
        plain = em.state_logits(x)
    assert em._packs == {}
    torch.testing.assert_close(fast, want, rtol=1e-5, atol=1e-4)
    assert torch.equal(plain, torch.addmm(em._bias(1.0 / em.tau2), x / em.tau2, em.table_t))


def test_nearest_tokens_in_blocks_match_the_brute_force_distance():
    g = torch.Generator().manual_seed(1)
    table = torch.randn(2000, 16, generator=g)
    support = torch.rand(2000, generator=g) > 0.1
    em = GaussianEmission(table, support)
    points = torch.randn(50, 16, generator=g)
    d2 = torch.cdist(points.double(), table.double()).masked_fill(~support, float("inf"))
    assert torch.equal(em.nearest_tokens(points, block=7), d2.argmin(-1))



def test_training_products_through_onednn_give_the_plain_values_and_gradients(monkeypatch):
    """The logits' products run through oneDNN's packed kernels with gradients too (training on a
    CPU): the same logits and gradients as torch's own products, to float rounding."""
    g = torch.Generator().manual_seed(3)
    table = torch.randn(3000, 48, generator=g)
    mean, var = torch.randn(40, 48, generator=g), torch.rand(40, 48, generator=g) + 0.5
    target = torch.randint(0, 3000, (40,), generator=g)

    def run():
        em = GaussianEmission(table, torch.ones(3000, dtype=torch.bool), tau_init=2.0)
        m = mean.clone().requires_grad_()
        shared = em.logits(m, em.tau2)  # one variance for every row
        per_row = em.logits(m, var)  # a variance per row
        loss = torch.nn.functional.cross_entropy(per_row, target) + torch.nn.functional.cross_entropy(shared, target)
        loss.backward()
        return shared.detach(), per_row.detach(), m.grad, em.log_tau.grad, em.prior_weight.grad, em

    fast = run()
    if onednn.pack(table) is not None:  # where torch has oneDNN, that path ran
        assert fast[-1]._packs["table"][1] is not None and fast[-1]._packs["table_t"][1] is not None
        # the per-row variance's two terms in one product, [m/var, -1/(2 var)] by [E, E^2]
        assert fast[-1]._packs["table_both"][1] is not None and fast[-1]._packs["table_both_t"][1] is not None
    monkeypatch.setenv("SDECORE_ONEDNN", "0")
    plain = run()
    assert plain[-1]._packs == {}
    for a, b in zip(fast[:-1], plain[:-1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_the_emission_cross_entropy_is_torchs_and_differentiates_once():
    """``losses.emission_ce`` with gradients works in the logits' memory: the loss and the
    gradient of ``F.cross_entropy``, the logits overwritten by their log-softmax, and a second
    backward refused rather than run on what the first consumed."""
    g = torch.Generator().manual_seed(4)
    base = (torch.randn(40, 3000, generator=g) * 4).requires_grad_()
    target = torch.randint(0, 3000, (40,), generator=g)
    want = torch.nn.functional.cross_entropy(base, target)
    (want_grad,) = torch.autograd.grad(want * 3.0, base)
    logits = base * 1.0
    loss = losses.emission_ce(logits, target)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(logits.detach(), torch.log_softmax(base.detach(), -1))
    (loss * 3.0).backward(retain_graph=True)
    torch.testing.assert_close(base.grad, want_grad, rtol=1e-5, atol=1e-7)
    with pytest.raises(RuntimeError, match="once per forward"):
        loss.backward()
    with torch.no_grad():  # without gradients: torch's own, the logits left as they are
        plain = base.detach().clone()
        torch.testing.assert_close(losses.emission_ce(plain, target), want)
        assert torch.equal(plain, base.detach())


def test_banned_ids_go_into_the_bias_with_and_without_gradients():
    """``state_logits(x, banned)`` is the logits with -inf at the banned ids, the others unchanged
    to the bit (the ids folded into the product's bias, no pass over the logits), and the decode
    never emits one."""
    g = torch.Generator().manual_seed(5)
    table = torch.randn(3000, 48, generator=g)
    em = GaussianEmission(table, torch.ones(3000, dtype=torch.bool), tau_init=2.0)
    x = torch.randn(37, 48, generator=g)
    banned = torch.rand(3000, generator=g) < 0.3
    with torch.no_grad():
        free = em.state_logits(x)
        assert torch.equal(em.state_logits(x, banned), free.masked_fill(banned, float("-inf")))
        ids, _ = em.decode(x, banned=banned)
        assert not banned[ids].any()
        assert torch.equal(ids, free.masked_fill(banned, float("-inf")).argmax(-1))
    with_grad = em.state_logits(x, banned)
    assert with_grad.requires_grad and torch.isinf(with_grad[:, banned]).all()
    torch.testing.assert_close(with_grad.detach()[:, ~banned], free[:, ~banned], rtol=1e-5, atol=1e-4)


def test_the_training_cross_entropy_on_per_row_logits_is_torchs(monkeypatch):
    """The training step's pairing, per-row-variance logits into ``emission_ce``: the loss and the
    gradients (mean, tau, the prior's weight) of ``F.cross_entropy`` on the plain two products,
    also where the transpose's pack declines (then the two products run, not a copy per call)."""
    g = torch.Generator().manual_seed(6)
    table = torch.randn(3000, 48, generator=g)
    mean, var = torch.randn(40, 48, generator=g), torch.rand(40, 48, generator=g) + 0.5
    target = torch.randint(0, 3000, (40,), generator=g)

    def run(ce):
        em = GaussianEmission(table, torch.ones(3000, dtype=torch.bool), tau_init=2.0)
        m = mean.clone().requires_grad_()
        loss = ce(em.next_token_logits(m, var), target)
        loss.backward()
        return [loss.detach(), m.grad, em.log_tau.grad, em.prior_weight.grad], em

    fast, em = run(losses.emission_ce)
    with monkeypatch.context() as mp:
        mp.setenv("SDECORE_ONEDNN", "0")
        plain, _ = run(torch.nn.functional.cross_entropy)
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    if onednn.pack(table) is None:
        return
    assert em._packs["table_both_t"][1] is not None
    real = onednn.pack
    monkeypatch.setattr(onednn, "pack", lambda w, *a, **k: None if w.shape[0] == 2 * 48 else real(w, *a, **k))
    declined, em = run(losses.emission_ce)
    assert em._packs["table_both_t"][1] is None
    for a, b in zip(declined, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_strided_or_low_precision_logits_take_torchs_cross_entropy():
    g = torch.Generator().manual_seed(7)
    wide = (torch.randn(20, 600, generator=g) * 4).requires_grad_()
    target = torch.randint(0, 300, (20,), generator=g)
    view = (wide * 1.0)[:, ::2]  # a strided view: the in-place kernel would be wrong on it
    want = torch.nn.functional.cross_entropy(wide.detach()[:, ::2], target)
    torch.testing.assert_close(losses.emission_ce(view, target), want)
    half = (wide.detach()[:, :300] * 1.0).bfloat16().requires_grad_()
    torch.testing.assert_close(losses.emission_ce(half, target), torch.nn.functional.cross_entropy(half, target))
