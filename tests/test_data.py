import json

import pandas as pd
import pytest
from conftest import HELPSTEER_DEV, TINY_CORPUS, needs_helpsteer

from sdecore.data import load_corpus, split_by_prompt


def test_jsonl_loads_with_helpsteer_columns():
    df = load_corpus(TINY_CORPUS)
    assert {"prompt", "response", "complexity"} <= set(df.columns)
    assert len(df) == sum(1 for _ in open(TINY_CORPUS))


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_other_formats_give_the_same_rows(tmp_path, suffix):
    ref = load_corpus(TINY_CORPUS)
    path = tmp_path / f"c{suffix}"
    if suffix == ".csv":
        ref.to_csv(path, index=False)
    elif suffix == ".parquet":
        ref.to_parquet(path)
    else:
        path.write_text(json.dumps(ref.to_dict(orient="records")))
    got = load_corpus(path)
    pd.testing.assert_frame_equal(got[["prompt", "response"]], ref[["prompt", "response"]])


def test_max_rows(tmp_path):
    assert len(load_corpus(TINY_CORPUS, max_rows=5)) == 5


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"prompt": ["a"], "answer": ["b"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="lacks column.*response"):
        load_corpus(path)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus("no/such/file.jsonl")


def test_garbage_file(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_text("not parquet")
    with pytest.raises(ValueError, match="cannot read corpus"):
        load_corpus(path)


def test_split_is_by_prompt_and_deterministic():
    df = load_corpus(TINY_CORPUS)
    a, b = split_by_prompt(df, 0.3), split_by_prompt(df.sample(frac=1.0, random_state=1), 0.3)
    tr, va = set(a.train["prompt"]), set(a.validation["prompt"])
    assert tr and va and not (tr & va)
    assert tr | va == set(df["prompt"])
    assert va == set(b.validation["prompt"])  # row order does not matter
    # every response of a validation prompt is in validation
    assert len(a.validation) == df["prompt"].isin(va).sum()


def test_a_prompt_keeps_its_side_when_rows_are_dropped():
    df = load_corpus(TINY_CORPUS)
    full = split_by_prompt(df, 0.3)
    keep = [full.train["prompt"].iloc[0], full.validation["prompt"].iloc[0], full.train["prompt"].iloc[-1]]
    sub = split_by_prompt(df[df["prompt"].isin(keep)], 0.3)
    assert set(sub.validation["prompt"]) == set(keep) & set(full.validation["prompt"])


@needs_helpsteer
def test_the_shared_helpsteer_rows_load_and_split_by_prompt():
    df = load_corpus(HELPSTEER_DEV)
    assert len(df) == 399 and df["prompt"].nunique() == 111
    assert {"helpfulness", "correctness", "coherence", "complexity", "verbosity"} <= set(df.columns)
    split = split_by_prompt(df, 0.2)
    val = split.validation["prompt"].nunique()
    assert not set(split.train["prompt"]) & set(split.validation["prompt"])
    assert 10 <= val <= 35  # about a fifth of the prompts


def test_a_hub_dataset_is_read_from_its_arrow_table_up_to_max_rows(monkeypatch):
    """A dataset name goes through datasets.load_dataset (here a real in-memory Dataset in
    place of the download): HelpSteer's columns only, and with --max-rows only the rows needed,
    an empty response not counting."""
    datasets = pytest.importorskip("datasets", reason="the hub extra (datasets) is not installed")
    rows = {"prompt": [f"question {i // 2}" for i in range(10)],
            "response": ["", *[f"answer {i}" for i in range(1, 10)]],
            "complexity": list(range(10)), "extra_column": ["x"] * 10}
    calls = []

    def fake_load(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_dict(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    df = load_corpus("someone/helpful", max_rows=3)
    assert calls == [("someone/helpful", "train")]
    assert df["response"].tolist() == ["answer 1", "answer 2", "answer 3"]
    assert set(df.columns) == {"prompt", "response", "complexity"}
    assert len(load_corpus("someone/helpful")) == 9


def test_a_hub_name_without_a_network_fails_at_once_in_one_line(tmp_path):
    """No network (here: the Hub's address points at a closed local port) and no cached copy:
    one line saying to pass a local file, without the libraries' retries (they took about 30 s
    and printed over 20 lines). The time bound is loose: it catches a retry loop, not speed."""
    import os
    import subprocess
    import sys
    import time

    from conftest import ROOT

    pytest.importorskip("datasets", reason="the hub extra (datasets) is not installed")
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_DATASETS_OFFLINE", None)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "sdecore", "train", "--corpus", "nvidia/HelpSteer", "--out",
                        str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pass a local" in lines[0] and "nvidia/HelpSteer" in lines[0], r.stderr
    assert elapsed < 20, elapsed
    assert not (tmp_path / "out").exists()
