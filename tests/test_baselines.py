"""Unigram and Kneser-Ney bigram baselines against probabilities worked out by hand.

Corpus (vocab of 8 ids, support S = {1, ..., 7}, id 0 a special token, |S| = 7):

    [1, 2, 3, 2, 3, 4]
    [2, 3, 5]

Unigram counts: c1 = 1, c2 = 3, c3 = 3, c4 = 1, c5 = 1, c6 = c7 = 0; N = 9.

Bigram pairs (inside each sequence only; (4, 2) spans the two sequences and is NOT a pair):
    seq 1: (1,2) (2,3) (3,2) (2,3) (3,4)      seq 2: (2,3) (3,5)
    c(1,2) = 1, c(2,3) = 3, c(3,2) = 1, c(3,4) = 1, c(3,5) = 1;  N1+(. .) = 5 bigram types.
    c(u):      c(1) = 1, c(2) = 3, c(3) = 3, c(4) = c(5) = c(6) = c(7) = 0.
    N1+(u .):  1 -> 1 ({2}), 2 -> 1 ({3}), 3 -> 3 ({2, 4, 5}).
    N1+(. w):  w=2 -> 2 ({1, 3}), w=3 -> 1, w=4 -> 1, w=5 -> 1, w=1, 6, 7 -> 0.
"""

from __future__ import annotations

import math

import pytest
import torch

from sdecore.baselines import KneserNeyBigramLM, UnigramLM, row_stats

VOCAB = 8
SEQS = [[1, 2, 3, 2, 3, 4], [2, 3, 5]]
HELD_OUT = [1, 2, 3, 6]  # transitions (1,2) (2,3) (3,6)


def _pointwise(model, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
    """log p(nxt | prev) (n,) float64, read off the model's rows."""
    return model.log_prob_rows(prev, dtype=torch.float64).gather(1, nxt[:, None])[:, 0]


def _support() -> torch.Tensor:
    s = torch.ones(VOCAB, dtype=torch.bool)
    s[0] = False
    return s


# Unigram, add-0.1: p(v) = (c_v + 0.1) / (N + 0.1 |S|) = (c_v + 0.1) / (9 + 0.7) = (c_v + 0.1) / 9.7
UNIGRAM = {0: 0.0, 1: 1.1 / 9.7, 2: 3.1 / 9.7, 3: 3.1 / 9.7, 4: 1.1 / 9.7, 5: 1.1 / 9.7, 6: 0.1 / 9.7, 7: 0.1 / 9.7}

# Continuation unigram, add-0.1: p_cont(w) = (N1+(. w) + 0.1) / (N1+(. .) + 0.1 |S|) = (N1+(. w) + 0.1) / 5.7
P_CONT = {0: 0.0, 1: 0.1 / 5.7, 2: 2.1 / 5.7, 3: 1.1 / 5.7, 4: 1.1 / 5.7, 5: 1.1 / 5.7, 6: 0.1 / 5.7, 7: 0.1 / 5.7}

D = 0.75
# Interpolation weights lambda(u) = D N1+(u .) / c(u):
#   u=1: 0.75 * 1 / 1 = 0.75;   u=2: 0.75 * 1 / 3 = 0.25;   u=3: 0.75 * 3 / 3 = 0.75.
# p(w|u) = max(c(u,w) - 0.75, 0) / c(u) + lambda(u) p_cont(w):
KN = {
    1: {w: 0.75 * P_CONT[w] for w in range(VOCAB)},
    2: {w: 0.25 * P_CONT[w] for w in range(VOCAB)},
    3: {w: 0.75 * P_CONT[w] for w in range(VOCAB)},
}
KN[1][2] = (1 - 0.75) / 1 + 0.75 * 2.1 / 5.7  # 0.25 + 0.276316 = 0.526316
KN[2][3] = (3 - 0.75) / 3 + 0.25 * 1.1 / 5.7  # 0.75 + 0.048246 = 0.798246
KN[3][2] = (1 - 0.75) / 3 + 0.75 * 2.1 / 5.7  # 0.083333 + 0.276316 = 0.359649
KN[3][4] = (1 - 0.75) / 3 + 0.75 * 1.1 / 5.7  # 0.083333 + 0.144737 = 0.228070
KN[3][5] = (1 - 0.75) / 3 + 0.75 * 1.1 / 5.7  # same as (3, 4)


@pytest.fixture()
def unigram() -> UnigramLM:
    return UnigramLM().fit(SEQS, _support(), alpha=0.1)


@pytest.fixture()
def bigram() -> KneserNeyBigramLM:
    return KneserNeyBigramLM().fit(SEQS, _support(), discount=D)


def _all_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    prev = torch.arange(VOCAB).repeat_interleave(VOCAB)
    nxt = torch.arange(VOCAB).repeat(VOCAB)
    return prev, nxt


# ----------------------------------------------------------------------------- hand values
def test_unigram_probabilities_match_hand_values(unigram: UnigramLM) -> None:
    assert unigram.counts_.tolist() == [0, 1, 3, 3, 1, 1, 0, 0]
    for v, p in UNIGRAM.items():
        got = unigram.log_probs_[v].exp().item()
        assert got == pytest.approx(p, rel=1e-12, abs=0), v
    assert unigram.log_probs_[0].item() == -math.inf
    # the unigram ignores the context
    lp = _pointwise(unigram, torch.tensor([5, 0, 7]), torch.tensor([2, 2, 6]))
    torch.testing.assert_close(lp.exp(), torch.tensor([3.1 / 9.7, 3.1 / 9.7, 0.1 / 9.7], dtype=torch.float64))


def test_bigram_counts_are_sparse_and_skip_sequence_boundaries(bigram: KneserNeyBigramLM) -> None:
    keys = bigram.pair_keys_
    pairs = [(k // VOCAB, k % VOCAB) for k in keys.tolist()]
    assert pairs == [(1, 2), (2, 3), (3, 2), (3, 4), (3, 5)]  # no (4, 2) across the sequences
    assert bigram.pair_counts_.tolist() == [1, 3, 1, 1, 1]
    assert bigram.context_counts_.tolist() == [0, 1, 3, 3, 0, 0, 0, 0]
    assert bigram.n_follow_.tolist() == [0, 1, 1, 3, 0, 0, 0, 0]
    for w, p in P_CONT.items():
        assert bigram.log_p_cont_[w].exp().item() == pytest.approx(p, rel=1e-12, abs=0), w


def test_bigram_probabilities_match_hand_values(bigram: KneserNeyBigramLM) -> None:
    prev, nxt = _all_pairs()
    lp = _pointwise(bigram, prev, nxt).exp()
    rows = bigram.log_prob_rows(torch.arange(VOCAB), dtype=torch.float64).exp()
    for u, w, p, r in zip(prev.tolist(), nxt.tolist(), lp.tolist(), rows.reshape(-1).tolist()):
        # seen contexts 1, 2, 3 from the table above; any other context (0, 4, ..., 7) falls back to p_cont
        expected = KN[u][w] if u in KN else P_CONT[w]
        assert p == pytest.approx(expected, rel=1e-12, abs=1e-300), (u, w)
        assert r == pytest.approx(expected, rel=1e-12, abs=1e-300), (u, w)


def test_unseen_contexts_fall_back_to_continuation_unigram(bigram: KneserNeyBigramLM) -> None:
    # 4 and 5 only end sequences, 6 and 7 never occur, 0 is outside the support: c(u) = 0 for all of them
    rows = bigram.log_prob_rows(torch.tensor([0, 4, 5, 6, 7]), dtype=torch.float64)
    for row in rows:
        torch.testing.assert_close(row, bigram.log_p_cont_)
    # p(2|4) is p_cont(2) = 2.1/5.7: the pair (4, 2) across the two sequences was not counted
    assert _pointwise(bigram, torch.tensor([4]), torch.tensor([2])).exp().item() == pytest.approx(2.1 / 5.7)


@pytest.mark.parametrize("model_name", ["unigram", "bigram"])
def test_rows_are_normalised_over_the_support(model_name: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(model_name)
    rows = model.log_prob_rows(torch.arange(VOCAB))
    assert rows.shape == (VOCAB, VOCAB) and rows.dtype == torch.float32
    assert torch.all(rows[:, 0] == -math.inf)  # zero probability outside the support
    assert torch.all(torch.isfinite(rows[:, 1:]))  # non-zero probability on every support token
    torch.testing.assert_close(rows.exp().sum(1), torch.ones(VOCAB))
    rows64 = model.log_prob_rows(torch.arange(VOCAB), dtype=torch.float64)
    torch.testing.assert_close(rows64.exp().sum(1), torch.ones(VOCAB, dtype=torch.float64), rtol=0, atol=1e-12)


def test_bigram_rows_sum_to_one_on_a_random_corpus() -> None:
    g = torch.Generator().manual_seed(0)
    vocab = 60
    support = torch.rand(vocab, generator=g) > 0.2
    ids = support.nonzero().squeeze(1)
    lengths = torch.randint(0, 30, (40,), generator=g).tolist()  # includes empty and one-token sequences
    seqs = [ids[torch.randint(len(ids), (n,), generator=g)].tolist() for n in lengths]
    for discount in (0.1, 0.75, 1.0):
        model = KneserNeyBigramLM().fit(seqs, support, discount=discount)
        rows = model.log_prob_rows(torch.arange(vocab), dtype=torch.float64)
        torch.testing.assert_close(rows.exp().sum(1), torch.ones(vocab, dtype=torch.float64), rtol=0, atol=1e-12)
        assert torch.all(torch.isfinite(rows[:, support])) and torch.all(rows[:, ~support] == -math.inf)


# ----------------------------------------------------------------------------- metrics
def _metrics(rows: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    nll, top1, top10 = row_stats(rows, targets)
    return {"nll": float(nll.mean()), "top1": float(top1.double().mean()), "top10": float(top10.double().mean())}


def test_held_out_perplexity_matches_hand_value(unigram: UnigramLM, bigram: KneserNeyBigramLM) -> None:
    prev, nxt = torch.tensor(HELD_OUT[:-1]), torch.tensor(HELD_OUT[1:])  # (1,2) (2,3) (3,6)
    # bigram: p(2|1) = 0.25 + 0.75*2.1/5.7, p(3|2) = 0.75 + 0.25*1.1/5.7, p(6|3) = 0.75*0.1/5.7 (unseen pair)
    nll = -(math.log(0.25 + 0.75 * 2.1 / 5.7) + math.log(0.75 + 0.25 * 1.1 / 5.7) + math.log(0.75 * 0.1 / 5.7)) / 3
    m = _metrics(bigram.log_prob_rows(prev, dtype=torch.float64), nxt)
    assert math.exp(m["nll"]) == pytest.approx(math.exp(nll), rel=1e-10)  # = 5.6556...
    # top-1 of row 1 is 2 (0.526) and of row 2 is 3 (0.798); 6 in row 3 is tied last: top1 = 2/3, top10 = 1
    assert m["top1"] == pytest.approx(2 / 3) and m["top10"] == 1.0
    # unigram: p(2) = p(3) = 3.1/9.7, p(6) = 0.1/9.7
    nll_u = -(2 * math.log(3.1 / 9.7) + math.log(0.1 / 9.7)) / 3
    mu = _metrics(unigram.log_prob_rows(prev, dtype=torch.float64), nxt)
    assert math.exp(mu["nll"]) == pytest.approx(math.exp(nll_u), rel=1e-10)  # = 9.8295...
    # 2 and 3 tie for the top probability, so both count as top-1 hits (fewer than 1 token strictly above)
    assert mu["top1"] == pytest.approx(2 / 3)
    # float32 rows, as the evaluation builds them, give the same numbers
    m32 = _metrics(bigram.log_prob_rows(prev), nxt)
    assert m32["nll"] == pytest.approx(nll, rel=1e-5) and (m32["top1"], m32["top10"]) == (m["top1"], m["top10"])


def test_top1_top10_on_a_small_example() -> None:
    # 12 tokens with log-probabilities in strictly decreasing order: token j has rank j (0 = most likely)
    row = torch.log_softmax(-torch.arange(12, dtype=torch.float64), dim=0)
    rows = row.expand(4, -1).clone()
    targets = torch.tensor([0, 3, 9, 10])  # ranks 0, 3, 9, 10
    m = _metrics(rows, targets)
    assert m["top1"] == 0.25  # only rank 0
    assert m["top10"] == 0.75  # ranks 0, 3 and 9 are among the 10 most likely; 10 is not
    assert m["nll"] == pytest.approx(-row[targets].mean().item())
    # a target with zero probability has an infinite NLL
    rows[0, 0] = -math.inf
    assert _metrics(rows, targets)["nll"] == math.inf


def test_row_stats_normalise_logits_themselves() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 30, generator=g, dtype=torch.float64) * 3
    logits[:, 7] = -math.inf  # a masked token, as the emission's support mask gives
    targets = torch.tensor([0, 4, 29, 11, 2])
    shifted = logits + torch.arange(5, dtype=torch.float64)[:, None] * 50  # a constant per row changes nothing
    got = row_stats(shifted, targets, normalised=False)
    want = row_stats(torch.log_softmax(logits, dim=1), targets)
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    # targets that share a row read it through row_of, as if the row were repeated
    row_of = torch.tensor([2, 0, 2, 4])
    tg = torch.tensor([3, 3, 29, 0])
    shared = row_stats(logits, tg, normalised=False, row_of=row_of)
    repeated = row_stats(logits[row_of], tg, normalised=False)
    for a, b in zip(shared, repeated):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="row_of"):
        row_stats(logits, tg, row_of=torch.tensor([0, 1, 2, 5]))


def test_metrics_reject_bad_input(bigram: KneserNeyBigramLM) -> None:
    with pytest.raises(ValueError, match="rows must be"):
        row_stats(torch.zeros(3, VOCAB), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        row_stats(torch.zeros(2, VOCAB), torch.tensor([0, VOCAB]))
    with pytest.raises(ValueError, match="outside"):
        bigram.log_prob_rows(torch.tensor([VOCAB]))


# ----------------------------------------------------------------------------- validation, sampling
def test_fit_validates_input() -> None:
    with pytest.raises(ValueError, match="outside the support"):
        UnigramLM().fit([[1, 0, 2]], _support())
    with pytest.raises(ValueError, match="outside the support"):
        KneserNeyBigramLM().fit([[1, 0, 2]], _support())
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        KneserNeyBigramLM().fit([[1, 8]], _support())
    with pytest.raises(ValueError, match="discount"):
        KneserNeyBigramLM().fit(SEQS, _support(), discount=1.5)
    with pytest.raises(ValueError, match="alpha"):
        UnigramLM().fit(SEQS, _support(), alpha=0.0)
    with pytest.raises(ValueError, match="boolean"):
        UnigramLM().fit(SEQS, torch.ones(VOCAB))


def test_sampling_is_reproducible_and_stays_on_support(bigram: KneserNeyBigramLM) -> None:
    model = bigram
    prev = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7]).repeat(500)
    a = model.sample(prev, torch.Generator().manual_seed(7), temperature=1.5)
    b = model.sample(prev, torch.Generator().manual_seed(7), temperature=1.5)
    assert torch.equal(a, b)
    assert a.shape == prev.shape and a.dtype == torch.long
    assert bool(_support()[a].all())
    greedy = model.sample(torch.tensor([2]), torch.Generator().manual_seed(0), temperature=0.0)
    assert greedy.item() == 3  # p(3|2) = 0.798 is the largest
    with pytest.raises(ValueError, match="temperature"):
        model.sample(prev, torch.Generator(), temperature=-1.0)


def test_sample_frequencies_follow_the_bigram() -> None:
    model = KneserNeyBigramLM().fit(SEQS, _support(), discount=D)
    draws = model.sample(torch.full((20000,), 2), torch.Generator().manual_seed(1))
    # p(3|2) = 0.798246; binomial standard error sqrt(0.8 * 0.2 / 20000) = 0.0028
    assert (draws == 3).float().mean().item() == pytest.approx(KN[2][3], abs=0.015)
