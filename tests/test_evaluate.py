"""The evaluate report: every model on the same transitions, the JSON contract, and the
continuous baselines' known answers."""

import json
import math

import pytest
import torch
from conftest import TINY_CORPUS

from sdecore.cli import main
from sdecore.evaluate import MODEL_NAMES, GaussianStep, evaluate_checkpoint, fit_continuous, predict_step
from sdecore.tokendata import WindowBatch


@pytest.fixture(scope="module")
def report(tiny_model):
    return evaluate_checkpoint(tiny_model, TINY_CORPUS, split="all")


def test_report_lists_every_model_with_every_metric(report):
    assert set(report["models"]) == set(MODEL_NAMES)
    for name, m in report["models"].items():
        assert set(m) == {"token_ppl", "increment_nll", "top1", "top10", "coverage90"}
        assert m["token_ppl"] > 1 and 0 <= m["top1"] <= m["top10"] <= 1
        if name in ("unigram", "bigram"):
            assert m["increment_nll"] is None and m["coverage90"] is None
        else:
            assert math.isfinite(m["increment_nll"]) and 0 <= m["coverage90"] <= 1


def test_counts_and_breakdown(report, tiny_model):
    # transitions: adjacent pairs inside each response, no special tokens
    from sdecore.data import load_corpus

    df = load_corpus(TINY_CORPUS)
    expected = sum(max(len(tiny_model.embedder.encode(r)) - 1, 0) for r in df["response"])
    assert report["n_transitions"] == expected
    groups = report["by_complexity"]
    assert set(groups) == {"0", "1", "2"}
    assert sum(g["n_transitions"] for g in groups.values()) == expected
    cal = report["calibration"]
    assert cal["observed"] == sorted(cal["observed"]) and len(cal["levels"]) == len(cal["observed"])


def test_validation_split_is_smaller(tiny_ckpt, report):
    val = json.loads((tiny_ckpt / "report.json").read_text())  # written by write_report on the validation split
    assert 0 < val["n_transitions"] < report["n_transitions"] and val["split"] == "validation"


def test_brownian_and_ar1_predictions_have_the_closed_form(tiny_model):
    torch.manual_seed(0)
    n, d = 4000, tiny_model.model.dim
    x = torch.randn(n, d)
    a_true = 0.5 * torch.eye(d)
    x_next = x @ a_true + 0.3 + 0.1 * torch.randn(n, d)
    zeros = torch.zeros(n, dtype=torch.long)
    data = WindowBatch(x=x, h=torch.zeros(n, tiny_model.model.config.memory_dim), t=torch.zeros(n), x_next=x_next,
                       v_next=zeros, v=zeros)
    # fitted from running sums over batches: the same as one batch of everything
    fits = fit_continuous(tiny_model.model, [WindowBatch(*(a[i:i + 999] for a in data.as_tuple()))
                                             for i in range(0, n, 999)])
    whole = fit_continuous(tiny_model.model, [data])
    for f in ("brownian_var", "ar1_a", "ar1_b", "ar1_var", "drift_var"):
        torch.testing.assert_close(getattr(fits, f), getattr(whole, f), rtol=1e-5, atol=1e-6)
    assert torch.allclose(fits.ar1_a, a_true, atol=0.03)
    assert torch.allclose(fits.ar1_b, torch.full((d,), 0.3), atol=0.03)
    ar1 = predict_step(tiny_model.model, data, "ar1", fits)
    # in-sample residual variance: sigma^2 (n - p) / n with p = d + 1 fitted coefficients
    expected = 0.01 * (n - d - 1) / n
    assert abs(float(ar1.var.mean()) / expected - 1) < 0.02  # per dimension the estimate's own noise is ~2%
    assert torch.allclose(ar1.var, torch.full((d,), expected), rtol=0.15)
    # ... and it is the variance of the residuals themselves
    torch.testing.assert_close(ar1.var, (x_next - ar1.mean).pow(2).mean(0), rtol=1e-3, atol=1e-6)
    br = predict_step(tiny_model.model, data, "brownian", fits)
    assert torch.equal(br.mean, x) and torch.allclose(br.var, (x_next - x).pow(2).mean(0))


def test_a_prediction_by_token_has_one_row_per_token():
    mean = torch.arange(12.0).reshape(6, 2)
    v = torch.tensor([7, 3, 7, 9, 3, 7])
    mean[2], mean[5], mean[4] = mean[0], mean[0], mean[1]  # the same token, the same prediction
    step = GaussianStep(mean, torch.ones(2)).by_token(v)
    assert step.mean.shape == (3, 2) and torch.equal(step.per_transition().mean, mean)


def test_cli_json_and_save(tiny_ckpt, capsys, tmp_path):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck)
    assert main(["evaluate", "--corpus", str(TINY_CORPUS), "--model", str(ck), "--format", "json",
                 "--max-rows", "12", "--split", "all", "--save"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert {"corpus", "n_transitions", "models"} <= set(obj) and set(obj["models"]) == set(MODEL_NAMES)
    assert json.loads((ck / "report.json").read_text()) == obj


def test_cli_bad_corpus(tiny_ckpt, capsys, tmp_path):
    assert main(["evaluate", "--corpus", str(tmp_path / "none.jsonl"), "--model", str(tiny_ckpt)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_write_report_writes_the_validation_report(tiny_ckpt):
    rep = json.loads((tiny_ckpt / "report.json").read_text())
    assert rep["split"] == "validation" and set(rep["models"]) == set(MODEL_NAMES)
    assert rep["data_credit"] == "NVIDIA HelpSteer (CC-BY-4.0)"


@torch.no_grad()
def test_the_sdes_perplexity_is_read_through_its_readout(tiny_model, report):
    """The report's SDE perplexity, recomputed by hand from the emission at the read-out's mean
    (docs/design.md §2.4); reading at x + mu dt instead gives another value."""
    from sdecore.data import load_corpus
    from sdecore.tokendata import encode_corpus, in_order

    model = tiny_model.model
    assert model.has_readout
    data = encode_corpus(tiny_model.embedder, load_corpus(TINY_CORPUS), training=False)
    nll = {"read": 0.0, "mean": 0.0}
    n = 0
    for b in in_order(model, data):
        mu, sigma, read = model.next_token_mean(b.x, b.h, b.t)
        var = sigma.pow(2) * model.config.dt
        for name, at in (("read", read), ("mean", b.x + mu * model.config.dt)):
            logp = torch.log_softmax(model.emission.next_token_logits(at, var), dim=-1)
            nll[name] -= float(logp.gather(1, b.v_next[:, None]).sum())
        n += len(b)
    assert math.isclose(report["models"]["sde"]["token_ppl"], math.exp(nll["read"] / n), rel_tol=1e-4)
    assert not math.isclose(math.exp(nll["mean"] / n), math.exp(nll["read"] / n), rel_tol=1e-2)
