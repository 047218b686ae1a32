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
