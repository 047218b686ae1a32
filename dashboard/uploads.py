"""Uploaded corpora for the Train page: read, check and convert them to prompt/response rows.

Accepted: HelpSteer-style tables (.jsonl, .json, .csv, .parquet with columns prompt and
response) and plain text (.txt). Plain text has no prompts, but the engine splits train
and validation **by prompt**, so paragraphs (separated by blank lines) become responses
and consecutive paragraphs are grouped under synthetic prompts "paragraph group i".
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
from pathlib import Path

import pandas as pd

import sdecore
import sdecore.data

MAX_UPLOAD_MB = 5
MAX_ROWS = 1000
MAX_COLUMNS = 256  # a table with more columns is refused from its header or metadata
MAX_EXPANDED_MB = 64  # the rows read from an upload may take this much memory (by metadata, then as read)
UPLOAD_TYPES = ("jsonl", "json", "csv", "parquet", "txt")
TARGET_GROUPS = 20  # plain text: about this many synthetic prompts, so both splits get some


def text_to_frame(text: str) -> pd.DataFrame:
    """Plain text -> prompt/response rows: each paragraph (blank-line separated) is a response;
    groups of consecutive paragraphs share a synthetic prompt "paragraph group i"."""
    paragraphs = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    paragraphs = [p for p in paragraphs if p]
    if len(paragraphs) < 2:
        raise ValueError(f"the text has {len(paragraphs)} paragraph(s); separate at least two paragraphs with a "
                         "blank line (train and validation are split by paragraph group)")
    size = max(1, len(paragraphs) // TARGET_GROUPS)
    return pd.DataFrame({"prompt": [f"paragraph group {i // size + 1}" for i in range(len(paragraphs))],
                         "response": paragraphs})


def _check_expansion(name: str, suffix: str, data: bytes) -> None:
    """Refuse, before reading it, a table that would expand far beyond its upload: a parquet file
    whose metadata promises more than ``MAX_EXPANDED_MB`` in the columns read (or more than
    ``MAX_COLUMNS`` columns), a CSV whose header has more than ``MAX_COLUMNS`` fields. What the
    metadata cannot show (a value repeated through a dictionary) the reader's own budget catches,
    a few rows at a time (``sdecore.load_corpus(max_bytes=)``)."""
    if suffix == "parquet":
        import pyarrow.parquet as pq

        try:
            meta = pq.ParquetFile(io.BytesIO(data)).metadata
        except Exception as exc:  # not parquet at all: pyarrow says why
            raise ValueError(f"{name} is not a readable parquet file ({type(exc).__name__})") from None
        if meta.num_columns > MAX_COLUMNS:
            raise ValueError(f"{name} has {meta.num_columns:,} columns; a corpus needs prompt and response "
                             f"(at most {MAX_COLUMNS} columns)")
        kept = set(sdecore.data.REQUIRED_COLUMNS + sdecore.data.SCORE_COLUMNS)
        expanded = sum(rg.column(c).total_uncompressed_size for r in range(meta.num_row_groups)
                       for rg in [meta.row_group(r)] for c in range(rg.num_columns)
                       if rg.column(c).path_in_schema in kept)
        if expanded > MAX_EXPANDED_MB * 2**20:
            raise ValueError(f"{name} expands to {expanded / 2**20:,.0f} MB of text; the limit is {MAX_EXPANDED_MB} MB")
    elif suffix == "csv":
        first = data.split(b"\n", 1)[0]
        try:
            fields = next(csv.reader([first.decode("utf-8", errors="replace")]), [])
        except csv.Error as exc:
            raise ValueError(f"{name} has an unreadable header line ({exc})") from None
        if len(fields) > MAX_COLUMNS:
            raise ValueError(f"{name} has {len(fields):,} columns; a corpus needs prompt and response "
                             f"(at most {MAX_COLUMNS} columns)")


def read_upload(name: str, data: bytes, max_rows: int = MAX_ROWS) -> pd.DataFrame:
    """Rows of an uploaded corpus (at most ``max_rows``), with prompt and response columns.

    Raises ValueError with a readable message for anything unusable."""
    if len(data) > MAX_UPLOAD_MB * 1024 * 1024:
        raise ValueError(f"{name} is {len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_MB} MB")
    suffix = Path(name).suffix.lower().lstrip(".")
    if suffix not in UPLOAD_TYPES:
        raise ValueError(f"{name} has type .{suffix or '?'}; upload one of {', '.join('.' + t for t in UPLOAD_TYPES)}")
    if not data.strip():
        raise ValueError(f"{name} is empty")
    if suffix == "txt":
        try:
            df = text_to_frame(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError(f"{name} is not UTF-8 text; save it as UTF-8 and upload it again") from None
        df = df.iloc[:max_rows]
    else:
        _check_expansion(name, suffix, data)
        with tempfile.TemporaryDirectory(prefix="sdecore_upload_") as tmp:
            path = Path(tmp) / f"upload.{suffix}"
            path.write_bytes(data)
            try:
                df = sdecore.load_corpus(path, max_rows=max_rows, max_bytes=MAX_EXPANDED_MB * 2**20)
            except FileNotFoundError as exc:
                raise ValueError(str(exc)) from None
            except ValueError as exc:
                raise ValueError(str(exc).replace(str(path), name)) from None
    if df["prompt"].nunique() < 2:
        raise ValueError(f"{name} has responses to only one prompt; training needs at least two distinct prompts "
                         "(train and validation are split by prompt)")
    return df.reset_index(drop=True)
