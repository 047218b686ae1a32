"""The benchmarks run and print what they claim to (their figures are the benchmark's, never the
tests'): ``python -m bench --quick`` end to end, the cost sweep, and the scale benchmark's corpus
(copies of the rows under their own prompts, so the split by prompt still works)."""

import json

from conftest import ROOT, TINY_CORPUS, needs_shipped_model

from bench.scale import bench_throughput, write_copies
from sdecore.data import load_corpus, split_by_prompt


def test_copies_get_their_own_prompts(tmp_path):
    out = tmp_path / "x3.jsonl"
    n = write_copies(TINY_CORPUS, out, 3)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    base = load_corpus(TINY_CORPUS)
    assert n == len(rows) == 3 * len(base)
    df = load_corpus(out)
    assert df["prompt"].nunique() == 3 * base["prompt"].nunique()
    assert set(df["response"]) == set(base["response"])
    split = split_by_prompt(df, 0.2)
    assert not split.train.empty and not split.validation.empty


def test_the_throughput_row_runs_on_a_tiny_corpus():
    row = bench_throughput(TINY_CORPUS, batch=64, steps=2)
    assert row["on_the_fly_transitions_per_s"] > 0 and row["precomputed_transitions_per_s"] > 0
    assert row["table_mb_per_1k_transitions"] > 100 * row["token_ids_mb_per_1k_transitions"]


@needs_shipped_model
def test_bench_quick_prints_every_row(tmp_path):
    """``python -m bench --quick`` end to end on the shipped model, as a user runs it: one JSON
    object (printed and written with --out) holding every row with its fields. The figures are
    the benchmark's, never the tests': nothing here is timed."""
    import shutil
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == result
    batches = {"1", "16", "128", "1024"}
    assert result["quick"] is True and set(result["gemm_gflops"]) == batches == set(result["gemm_gflops_onednn"])
    assert isinstance(result["few_rows_one_thread"], bool)
    assert all(v > 0 for v in result["gemm_gflops"].values())
    methods = ("em", "torchsde-euler", "torchsde-milstein")
    assert {(r["method"], str(r["batch"])) for r in result["sampling"]} == {(m, b) for m in methods for b in batches}
    for r in result["sampling"]:
        assert set(r) == {"batch", "steps", "method", "path_steps_per_s", "gflop_per_path_step", "roofline_fraction",
                          "roofline_fraction_best"}
        assert r["path_steps_per_s"] > 0 and r["gflop_per_path_step"] > 0
        assert 0 < r["roofline_fraction_best"] <= r["roofline_fraction"]
    big = result["big_request"]
    assert (big["paths"], big["tokens"]) == (4096, 16) and big["seconds"] > 0 and big["peak_rss_mb"] > 50
    train = result["training"]
    assert {"transitions_per_s", "roofline_fraction", "roofline_fraction_best"} <= set(train)
    assert set(result["projection"]) == {"points", "umap_transform_ms", "fast_transform_ms", "speedup",
                                         "trustworthiness_umap", "trustworthiness_fast"}
    dash = result["dashboard"]
    if shutil.which("/usr/bin/chromium"):
        assert {"rerun_ms_median", "rerun_ms", "cold_start_s", "peak_rss_mb"} <= set(dash)
        assert dash["rerun_ms_median"] > 0 and dash["cold_start_s"] > 0 and len(dash["rerun_ms"]) == 5
        assert dash["rerun_step_ms_median"] > 0 and len(dash["rerun_step_ms"]) == 5
        assert dash["prefetch_hits"] == 5, "each single step of the slider finds its run prefetched"
    else:
        assert "skipped" in dash


def test_the_cost_rows_grow_with_paths_and_tokens(tiny_model):
    import torch

    from bench.sampling import bench_cost

    cost = bench_cost(tiny_model, torch.device("cpu"), paths=(1, 2), tokens=(2, 3), paths_at=2, tokens_at=2)
    assert [r["paths"] for r in cost["by_paths"]] == [1, 2] and [r["tokens"] for r in cost["by_tokens"]] == [2, 3]
    assert all(r["seconds"] > 0 and r["path_steps_per_s"] > 0 for r in cost["by_paths"] + cost["by_tokens"])


def test_the_ablation_trains_and_scores_its_variants(tmp_path, capsys):
    """``python -m bench.ablation`` on the tests' corpus, one epoch, two variants: a row each with
    the SDE's held-out figures and the baselines' increment NLL."""
    from bench.ablation import main

    main(["--corpus", str(TINY_CORPUS), "--epochs", "1", "--only", "no_readout", "readout",
          "--out-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "ablation.json")])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "ablation.json").read_text())
    assert [r["name"] for r in printed["rows"]] == ["no_readout", "readout"]
    for row in printed["rows"]:
        assert row["token_ppl"] > 1 and 0 <= row["coverage90"] <= 1 and row["best_epoch"] == 1
        assert set(row["baseline_increment_nll"]) == {"ar1", "drift_only", "brownian"}
    from sdecore import load_checkpoint

    assert load_checkpoint(tmp_path / "runs" / "no_readout").model.readout_net is None
    assert load_checkpoint(tmp_path / "runs" / "readout").model.config.readout_hidden == 512
