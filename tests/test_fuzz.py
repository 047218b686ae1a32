"""Bad input, fuzzed with hypothesis: whatever bytes a corpus file or an upload holds, whatever
text a prompt or a numeric argument is, the answer is a result or one readable line (ValueError
in the library, exit status 2 on the command line, a message on the page), never a traceback.

The numbers of examples are set per test (``settings(max_examples=...)``);
``python -m pytest tests/test_fuzz.py --hypothesis-show-statistics`` prints what each ran."""

from __future__ import annotations

import io
import json
import string
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboard import uploads
from sdecore import load_corpus

FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# values a corpus cell might hold, and column names close to the real ones
cells = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=40))
names = st.sampled_from(["prompt", "response", "helpfulness", "complexity", "Prompt", "", "x", "response "])
rows = st.lists(st.dictionaries(names, cells, max_size=5), max_size=12)


def _one_line(exc: Exception) -> bool:
    return "\n" not in str(exc) and str(exc).strip() != ""


def _check_upload(name: str, data: bytes) -> None:
    try:
        df = uploads.read_upload(name, data)
    except ValueError as exc:
        assert _one_line(exc), repr(str(exc))
    else:
        assert {"prompt", "response"} <= set(df.columns) and df["prompt"].nunique() >= 2
        assert len(df) <= uploads.MAX_ROWS and df["response"].map(lambda r: isinstance(r, str) and r.strip()).all()


@FAST
@given(data=st.binary(max_size=3000), suffix=st.sampled_from(uploads.UPLOAD_TYPES))
def test_an_upload_of_any_bytes_is_rows_or_one_line(data, suffix):
    _check_upload(f"upload.{suffix}", data)


@FAST
@given(records=rows, lines=st.booleans())
def test_json_uploads_of_any_records(records, lines):
    text = "\n".join(json.dumps(r) for r in records) if lines else json.dumps(records)
    _check_upload("c.jsonl" if lines else "c.json", text.encode())


@FAST
@given(header=st.lists(names, min_size=1, max_size=5),
       body=st.lists(st.lists(st.text(alphabet=string.printable, max_size=15), min_size=1, max_size=6), max_size=10))
def test_csv_uploads_of_any_fields(header, body):
    import csv

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(body)
    _check_upload("c.csv", out.getvalue().encode())


@SLOW
@given(records=rows.filter(bool))
def test_parquet_uploads_of_any_table(records):
    frame = pd.DataFrame(records)
    frame.columns = [str(c) for c in frame.columns]
    buf = io.BytesIO()
    try:
        frame.astype("string").to_parquet(buf)  # parquet needs one type a column
    except (ValueError, TypeError):
        return  # a frame pyarrow itself refuses to write is not an upload anyone can make
    _check_upload("c.parquet", buf.getvalue())


@FAST
@given(data=st.binary(max_size=3000), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet"]))
def test_a_corpus_file_of_any_bytes_is_rows_or_one_line(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"corpus{suffix}"
        path.write_bytes(data)
        try:
            df = load_corpus(path)
        except ValueError as exc:
            assert _one_line(exc), repr(str(exc))
        else:
            assert {"prompt", "response"} <= set(df.columns) and not df.empty


@FAST
@given(option=st.sampled_from(["--paths", "--tokens", "--diffusion-scale", "--substeps", "--seed",
                               "--temperature"]),
       value=st.one_of(st.text(max_size=12), st.integers().map(str), st.floats().map(str)))
def test_numeric_arguments_are_accepted_or_refused_in_one_line(option, value):
    import contextlib

    from sdecore.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser().parse_args(["sample", "--prompt", "hi", option, value])
    except SystemExit as exc:
        assert exc.code == 2
        assert err.getvalue().count("\n") == 1 and err.getvalue().startswith("sdecore sample: error: ")


@FAST
@given(prompt=st.text(max_size=200))
def test_any_prompt_gives_paths_or_one_line(tiny_model, prompt):
    from sdecore import simulate_paths

    try:
        r = simulate_paths(tiny_model.model, tiny_model.embedder, prompt, paths=2, tokens=2, seed=1)
    except ValueError as exc:
        assert _one_line(exc)
    else:
        assert r.token_ids.shape == (2, 2)


@pytest.fixture(scope="module")
def generate_page(tiny_ckpt):
    import os

    from streamlit.testing.v1 import AppTest

    old = os.environ.get("SDECORE_MODEL")
    os.environ["SDECORE_MODEL"] = str(tiny_ckpt)
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py"),
                           default_timeout=120)
    at.query_params.update({"paths": "2", "tokens": "3"})
    at.run()
    yield at
    if old is None:
        os.environ.pop("SDECORE_MODEL", None)
    else:
        os.environ["SDECORE_MODEL"] = old


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(prompt=st.text(max_size=120))
def test_any_prompt_on_the_page_gives_text_or_a_message(generate_page, prompt):
    at = generate_page
    at.text_area(key="prompt").input(prompt).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.error or any("\n\n**1.**" in m.value for m in at.markdown)  # the continuations, a line each
