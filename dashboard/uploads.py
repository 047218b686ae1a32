"""Uploaded corpora for the Train page: read, check and convert them to prompt/response rows.

Accepted: HelpSteer-style tables (.jsonl, .json, .csv, .parquet with columns prompt and
response) and plain text (.txt). Plain text has no prompts, but the engine splits train
and validation **by prompt**, so paragraphs (separated by blank lines) become responses
and consecutive paragraphs are grouped under synthetic prompts "paragraph group i".
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pandas as pd

import sdecore

MAX_UPLOAD_MB = 5
MAX_ROWS = 1000
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
        with tempfile.TemporaryDirectory(prefix="sdecore_upload_") as tmp:
            path = Path(tmp) / f"upload.{suffix}"
            path.write_bytes(data)
            try:
                df = sdecore.load_corpus(path, max_rows=max_rows)
            except FileNotFoundError as exc:
                raise ValueError(str(exc)) from None
            except ValueError as exc:
                raise ValueError(str(exc).replace(str(path), name)) from None
    if df["prompt"].nunique() < 2:
        raise ValueError(f"{name} has responses to only one prompt; training needs at least two distinct prompts "
                         "(train and validation are split by prompt)")
    return df.reset_index(drop=True)
