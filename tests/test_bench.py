"""The scale benchmark's corpus: copies of the rows under their own prompts, so the split by
prompt still works on the larger corpus."""

import json

from conftest import TINY_CORPUS

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


def test_the_sampling_rows_have_their_shape(tiny_model):
    """A smoke run of the sampling benchmark's rows (tiny sizes; the figures are the bench's,
    not the tests')."""
    import torch

    from bench.sampling import bench_big_request, bench_sampling

    gemm, rows = bench_sampling(tiny_model, [1, 3], steps=2, repeat=1, device=torch.device("cpu"))
    assert set(gemm) == {"1", "3"} and all(v > 0 for v in gemm.values())
    assert {(r["method"], r["batch"]) for r in rows} == {(m, b) for m in ("em", "torchsde-euler", "torchsde-milstein")
                                                         for b in (1, 3)}
    for r in rows:
        assert set(r) == {"batch", "steps", "method", "path_steps_per_s", "gflop_per_path_step", "roofline_fraction"}
        assert r["path_steps_per_s"] > 0 and r["gflop_per_path_step"] > 0 and r["roofline_fraction"] > 0
    big = bench_big_request(paths=8, tokens=2)
    assert big["paths"] == 8 and big["seconds"] > 0 and big["peak_rss_mb"] > 50


def test_the_training_row_counts_its_flops(tiny_model):
    import torch

    from bench.run import bench_training

    row = bench_training(tiny_model, batch=16, repeat=1, device=torch.device("cpu"))
    assert row["transitions_per_s"] > 0 and row["gflop_per_step"] > 0 and 0 < row["roofline_fraction"]


def test_the_dashboard_row_has_its_shape():
    """The dashboard benchmark at one slider value: a rerun time, a cold start to the first chart in
    Chromium and the server's memory (the figures are the benchmark's, not the tests')."""
    import shutil

    import pytest

    from bench.dashboard import CHROMIUM, cold_start, rerun_ms

    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    row = {**rerun_ms(values=(0.45,)), **cold_start()}
    assert row["rerun_ms_median"] > 0 and len(row["rerun_ms"]) == 1
    assert row["cold_start_s"] > 0 and row["peak_rss_mb"] > 50
