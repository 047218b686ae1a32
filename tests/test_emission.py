"""The Gaussian emission's closed form and its read-outs, on a small hand-made table."""

import math

import torch

from sdecore.emission import GaussianEmission

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
    with torch.no_grad():
        assert torch.equal(em.state_logits(x), em.logits(x, em.tau2))
        em.log_tau.add_(0.7)  # an optimiser step or a loaded checkpoint changes them in place
        em.prior_weight.mul_(0.2)
        assert torch.equal(em.state_logits(x), em.logits(x, em.tau2))
        em.load_state_dict({**em.state_dict(), "log_prior": torch.zeros(5)})
        assert torch.equal(em.state_logits(x), em.logits(x, em.tau2))


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
