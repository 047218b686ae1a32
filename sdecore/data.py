"""Corpus loading and the train/validation split by prompt (docs/design.md §2.5).

A corpus has HelpSteer's columns: ``prompt`` and ``response`` are required; the scores
(``helpfulness``, ``correctness``, ``coherence``, ``complexity``, ``verbosity``) are kept
when present. Sources: a Hugging Face dataset name (``nvidia/HelpSteer``, loaded with the
``datasets`` library) or a local ``.jsonl``, ``.json``, ``.csv`` or ``.parquet`` file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("prompt", "response")
SCORE_COLUMNS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_OFFLINE_LOCK = threading.Lock()  # offline mode is process-wide: one offline load at a time


def load_corpus(src: str | Path, max_rows: int | None = None, max_bytes: int | None = None) -> pd.DataFrame:
    """Rows of a corpus as a DataFrame with at least ``prompt`` and ``response``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for an unreadable
    one or missing columns. With ``max_bytes`` a local file is refused (ValueError) once the rows
    read from it take more memory than that, a chunk of rows at a time: a small compressed file
    cannot expand into gigabytes.
    """
    src_str = str(src)
    path = Path(src_str).expanduser()
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        df = _read_local(path, max_rows, max_bytes)
    elif src_str.count("/") == 1 and not src_str.startswith((".", "/", "~")):
        df = _read_hub(src_str, max_rows)
    else:
        raise FileNotFoundError(f"corpus {src_str!r} not found: give a local {'/'.join(LOCAL_SUFFIXES)} file "
                                "or a Hugging Face dataset name such as nvidia/HelpSteer")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        found = ", ".join(map(str, df.attrs.get("columns", df.columns)))
        raise ValueError(f"corpus {src_str!r} lacks column(s) {', '.join(missing)}; it needs "
                         f"{', '.join(REQUIRED_COLUMNS)} (HelpSteer's columns); found: {found}")
    df = _usable(df)
    if max_rows is not None:
        df = df.iloc[:max_rows]
    if df.empty:
        raise ValueError(f"corpus {src_str!r} has no rows with a non-empty response")
    return df.reset_index(drop=True)


def _usable(df: pd.DataFrame) -> pd.DataFrame:
    """The rows with a prompt and a non-empty response, both as strings."""
    df = df.dropna(subset=list(REQUIRED_COLUMNS))
    df = df[df["response"].astype(str).str.strip() != ""].copy()
    df["prompt"] = df["prompt"].astype(str)
    df["response"] = df["response"].astype(str)
    return df


_KEPT = REQUIRED_COLUMNS + SCORE_COLUMNS
_CHUNK_ROWS = 2048


def _read_local(path: Path, max_rows: int | None = None, max_bytes: int | None = None) -> pd.DataFrame:
    """A local file's rows, only HelpSteer's columns kept (the frame's ``attrs["columns"]`` lists
    every column the file has), and with ``max_rows`` only as many chunks of rows as give that
    many usable ones: a big CSV, JSON-lines or parquet file is not read beyond what is needed."""
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            with pd.read_json(path, lines=True, chunksize=_CHUNK_ROWS) as chunks:
                return _first_usable(chunks, max_rows, None, max_bytes)
        if suffix == ".json":
            try:
                return _first_usable([pd.read_json(path)], max_rows, None, max_bytes)
            except ValueError:
                with pd.read_json(path, lines=True, chunksize=_CHUNK_ROWS) as chunks:
                    return _first_usable(chunks, max_rows, None, max_bytes)
        if suffix == ".csv":
            header = list(pd.read_csv(path, nrows=0).columns)
            with pd.read_csv(path, usecols=lambda c: c in _KEPT, chunksize=_CHUNK_ROWS) as chunks:
                return _first_usable(chunks, max_rows, header, max_bytes)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            size = _CHUNK_ROWS if max_bytes is None else 64  # small batches: a budget is checked per batch
            kept = [c for c in names if c in _KEPT]
            batches = (b.to_pandas() for b in pf.iter_batches(batch_size=size, columns=kept))
            return _first_usable(batches, max_rows, names, max_bytes)
    except _TooBig as exc:
        raise ValueError(f"corpus {path} is refused: {exc}") from None
    except Exception as exc:  # pandas raises many types for malformed files
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(f"cannot read corpus {path}: {type(exc).__name__}: {first}") from exc
    raise ValueError(f"corpus {path} has unsupported type {suffix!r}; use {', '.join(LOCAL_SUFFIXES)}")


class _TooBig(ValueError):
    """A file's rows outgrew the reading budget."""


def _first_usable(chunks, max_rows: int | None, columns: list | None = None,
                  max_bytes: int | None = None) -> pd.DataFrame:
    """Chunks of a file's rows until ``max_rows`` usable ones (all of them without a limit), with
    only HelpSteer's columns; ``attrs["columns"]`` holds every column of the file. Past
    ``max_bytes`` of rows in memory, ValueError."""
    frames, usable, held, found = [], 0, 0, list(columns) if columns is not None else None
    for chunk in chunks:
        if not isinstance(chunk, pd.DataFrame):
            raise ValueError(f"the file holds {type(chunk).__name__}, not rows with columns")
        if found is None:
            found = list(chunk.columns)
        frames.append(chunk[[c for c in chunk.columns if c in _KEPT]])
        if max_bytes is not None:
            held += int(frames[-1].memory_usage(deep=True).sum())
            if held > max_bytes:
                raise _TooBig(f"its rows expand beyond {max_bytes / 2**20:,.0f} MB in memory")
        if max_rows is not None and set(REQUIRED_COLUMNS) <= set(chunk.columns):
            usable += len(_usable(chunk))
            if usable >= max_rows:
                break
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df.attrs["columns"] = [str(c) for c in (found or [])]
    return df


def _read_hub(name: str, max_rows: int | None = None) -> pd.DataFrame:
    """A Hugging Face dataset's train split. ``datasets`` keeps it as a memory-mapped Arrow table
    in its cache (downloaded once); only HelpSteer's columns, and with ``max_rows`` only the
    first rows that are needed, are read out of it into memory."""
    from .extras import require

    offline = _hub_offline()
    datasets = require("datasets", f"loading the Hugging Face dataset {name!r}")
    try:
        # offline: read the local cache only, instead of retrying a network that is not there
        with _OFFLINE_LOCK if offline else contextlib.nullcontext(), \
                _offline_mode(datasets) if offline else contextlib.nullcontext():
            ds = datasets.load_dataset(name, split="train")
    except Exception as exc:  # unknown name, not cached, ...
        if offline:
            raise FileNotFoundError(
                f"cannot reach the Hugging Face Hub and {name!r} is not in the local cache; pass a local "
                f"{'/'.join(LOCAL_SUFFIXES)} file with its rows instead") from exc
        raise FileNotFoundError(f"cannot load Hugging Face dataset {name!r} ({type(exc).__name__}); "
                                "check the name and the network, or pass a local file") from exc
    ds = ds.select_columns([c for c in ds.column_names if c in REQUIRED_COLUMNS + SCORE_COLUMNS])
    if max_rows is None:
        return ds.to_pandas()
    if not set(REQUIRED_COLUMNS) <= set(ds.column_names):
        return ds.select(range(min(max_rows, len(ds)))).to_pandas()  # load_corpus names what is missing
    frames, usable, start = [], 0, 0
    while start < len(ds) and usable < max_rows:  # rows with an empty response do not count
        part = ds.select(range(start, min(start + max_rows, len(ds)))).to_pandas()
        frames.append(part)
        usable += len(_usable(part))
        start += max_rows
    return pd.concat(frames, ignore_index=True)


def _hub_offline(timeout: float = 3.0) -> bool:
    """True when the environment asks for offline mode or the Hub's host cannot be reached
    within ``timeout`` seconds (one TCP connection, no retries; not tried behind a proxy)."""
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return True
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False  # only the proxy can tell; leave it to the libraries
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
    except (OSError, ValueError):
        return True
    return False


@contextlib.contextmanager
def _offline_mode(datasets):
    """The Hugging Face libraries in offline mode for the duration: the environment variables
    and, for libraries imported before (they read them once), their module flags; all restored
    afterwards."""
    import huggingface_hub.constants as hub

    flags = [(hub, "HF_HUB_OFFLINE")] + [(datasets.config, f) for f in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
                                         if hasattr(datasets.config, f)]
    saved_flags = [(mod, f, getattr(mod, f)) for mod, f in flags]
    saved_env = {v: os.environ.get(v) for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    try:
        for mod, f in flags:
            setattr(mod, f, True)
        os.environ.update(dict.fromkeys(saved_env, "1"))
        yield
    finally:
        for mod, f, value in saved_flags:
            setattr(mod, f, value)
        for v, value in saved_env.items():
            if value is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = value


def _prompt_hash(prompt: str) -> float:
    """A number in [0, 1) fixed by the prompt's text alone, so that a prompt lands in the
    same split whatever other rows the corpus holds."""
    return int(hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:13], 16) / 16**13


@dataclass
class Split:
    train: pd.DataFrame
    validation: pd.DataFrame


def split_by_prompt(df: pd.DataFrame, val_fraction: float = 0.2) -> Split:
    """Deterministic train/validation split by prompt: all responses to a prompt land on
    the same side. A corpus with at least two prompts gets at least one on each side."""
    prompts = sorted(set(df["prompt"]), key=_prompt_hash)
    val = {p for p in prompts if _prompt_hash(p) < val_fraction}
    if len(prompts) >= 2:
        if not val:
            val = {prompts[0]}
        if len(val) == len(prompts):
            val.discard(prompts[-1])
    is_val = df["prompt"].isin(val)
    return Split(train=df[~is_val].reset_index(drop=True), validation=df[is_val].reset_index(drop=True))
