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
