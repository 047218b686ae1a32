"""The relevance-versus-diversity frontier: the text measures on hand-made answers, the
report's structure on the tiny model, and bad input."""

import json
import math

import pytest
import torch
from conftest import TINY_CORPUS

from sdecore.baselines import KneserNeyBigramLM
from sdecore.frontier import (
    FRONTIER,
    OOD_PROMPTS,
    FrontierSettings,
    derangement,
    format_frontier,
    frontier_report,
    sample_bigram,
    write_frontier,
)
from sdecore.textquality import bleu, distinct_n, relevance_scores, rouge_l, self_bleu

ROW_KEYS = {"generator", "scale", "relevance", "relevance_random", "distinct2", "self_bleu", "bleu", "rouge_l",
            "diverged_share", "n_continuations"}


# --------------------------------------------------------------------------- measures, known answers
def test_distinct2_counts_bigrams_inside_each_sequence():
    same = [["the", "cat", "sat", "down"]] * 4
    assert distinct_n(same, 2) == pytest.approx(3 / 12)  # 3 distinct of 4 x 3 bigrams
    assert distinct_n([["a", "b", "c"], ["d", "e", "f"]], 2) == 1.0
    assert distinct_n([["a", "b"], ["b", "a"]], 2) == 1.0  # (a, b) and (b, a); no pair across sequences
    assert distinct_n([["a"], []], 2) is None


def test_self_bleu_identical_is_100_and_different_is_low():
    same = ["the cat sat on the warm mat today"] * 3
    assert self_bleu(same) == pytest.approx(100.0)
    different = ["the cat sat on the warm mat today", "quantum fields obey gauge symmetry rules here",
                 "buy eggs milk flour and two lemons please"]
    assert self_bleu(different) < 10
    assert self_bleu(["only one"]) is None
    assert self_bleu(["", "", "a b c d"]) == 0.0  # empty texts score 0, no crash


def test_bleu_and_rouge_on_empty_strings_and_exact_matches():
    assert bleu([""], [""]) == 0.0 and bleu(["", ""], ["a b", ""]) == 0.0
    assert rouge_l([""], ["a b"]) == 0.0 and rouge_l(["a b"], [""]) == 0.0
    text = "water the plant when the top inch of soil feels dry"
    assert bleu([text], [text]) == pytest.approx(100.0)
    assert rouge_l([text], [text]) == pytest.approx(1.0)
    assert bleu([], []) is None and rouge_l([], []) is None


def test_relevance_of_a_text_to_itself_is_one_and_unrelated_lower():
    a = "How do I keep a houseplant alive? Water it when the soil is dry."
    b = "The stock market fell sharply after the central bank raised interest rates."
    sims = relevance_scores([a, a, ""], [a, b, a])
    assert sims[0] == pytest.approx(1.0, abs=1e-5)
    assert sims[1] < 0.5 and sims[2] == 0.0
    cache = {}
    again = relevance_scores([a, a, ""], [a, b, a], cache)
    assert set(cache) == {a, b} and again == pytest.approx(sims, abs=1e-6)  # the empty text is never embedded
    assert relevance_scores([b], [a], cache) == pytest.approx(sims[1:2], abs=1e-6)


def test_derangement_has_no_fixed_point_and_is_seeded():
    for n in (2, 3, 7, 12):
        p = derangement(n, 3)
        assert sorted(p) == list(range(n)) and all(p[i] != i for i in range(n))
    assert derangement(9, 1) == derangement(9, 1)
    assert derangement(1, 0) is None


def test_bigram_sampling_is_reproducible_with_a_seed():
    support = torch.ones(6, dtype=torch.bool)
    lm = KneserNeyBigramLM().fit([[0, 1, 2, 3, 4, 5, 0, 2, 4]], support)
    a = sample_bigram(lm, [0, 3], paths=3, tokens=10, seed=5)
    assert a == sample_bigram(lm, [0, 3], paths=3, tokens=10, seed=5)
    assert len(a) == 2 and all(len(block) == 3 and all(len(c) == 10 for c in block) for block in a)
    assert a != sample_bigram(lm, [0, 3], paths=3, tokens=10, seed=6)
    assert all(0 <= v < 6 for block in a for c in block for v in c)


# --------------------------------------------------------------------------- the report on the tiny model
@pytest.fixture(scope="module")
def report(tiny_model):
    settings = FrontierSettings(max_prompts=2, paths=2, tokens=6, scales=(0, 1), prefix_tokens=4, cont_tokens=4,
                                lengths=(8,), length_prompts=2, length_paths=2)
    return frontier_report(tiny_model, TINY_CORPUS, settings)


def test_report_structure_and_ranges(report):
    assert report["split"] == "validation" and report["data_credit"] == "NVIDIA HelpSteer (CC-BY-4.0)"
    assert [(r["generator"], r["scale"]) for r in report["rows"]] == [("sde", 0.0), ("sde", 1.0), ("bigram", None)]
    for r in report["rows"]:
        assert set(r) == ROW_KEYS and r["n_continuations"] == 4
        assert -1 <= r["relevance"] <= 1 and -1 <= r["relevance_random"] <= 1
        assert 0 < r["distinct2"] <= 1 and 0 <= r["self_bleu"] <= 100
        assert 0 <= r["bleu"] <= 100 and 0 <= r["rouge_l"] <= 1 and 0 <= r["diverged_share"] <= 1
    assert report["rows"][-1]["diverged_share"] == 0.0
    (length,) = report["lengths"]
    assert length["tokens"] == 8 and {"relevance", "relevance_random", "diverged_share"} <= set(length)
    ood = report["out_of_distribution"]
    assert len(ood) == 2 * len(OOD_PROMPTS) and 5 <= len(OOD_PROMPTS) <= 6
    assert {r["scale"] for r in ood} == {0.5, 1.0} and {r["prompt_kind"] for r in ood} == set(OOD_PROMPTS)
    assert all(-1 <= r["relevance"] <= 1 and 0 <= r["diverged_share"] <= 1 for r in ood)
    json.dumps(report, allow_nan=False)  # JSON-ready, no NaN


def test_scale_zero_paths_are_equal_so_diversity_grows_with_the_scale(report):
    at0, at1 = report["rows"][0], report["rows"][1]
    assert at0["self_bleu"] in (0.0, pytest.approx(100.0))  # identical paths (0 only if they are empty)
    assert at0["distinct2"] <= 1 / 2 + 1e-9  # 2 identical paths: at most half of the bigrams are distinct
    assert at0["distinct2"] <= at1["distinct2"]


def test_format_and_write(report, tmp_path):
    text = format_frontier(report)
    assert "bigram" in text and "sde" in text and "out-of-distribution" in text
    path = write_frontier(tmp_path, report)
    assert path == tmp_path / FRONTIER and json.loads(path.read_text())["rows"] == report["rows"]


@pytest.mark.parametrize("kwargs, match", [
    ({"scales": ()}, "--scales is empty"),
    ({"scales": (0.5, -1)}, "--scales must be a finite number between 0"),
    ({"scales": (math.nan,)}, "--scales must be a finite number"),
    ({"paths": 0}, "--paths must be an integer"),
    ({"lengths": ()}, "--lengths is empty"),
    ({"seed": -1}, "--seed must be a non-negative integer"),
])
def test_bad_settings_raise(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        frontier_report(tiny_model, TINY_CORPUS, FrontierSettings(**kwargs))


def test_unknown_corpus_raises(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError):
        frontier_report(tiny_model, tmp_path / "missing.jsonl")
