"""Benchmarks printing JSON: ``python -m bench`` (bench/run.py), ``python -m bench.classroom`` (a class on
one dashboard), ``python -m bench.ablation`` (what each model change did to the held-out fit)."""

from __future__ import annotations

import json
from pathlib import Path


def emit(result: dict, out: str | None) -> None:
    """Print a benchmark's JSON object, and write it to ``out`` when given."""
    text = json.dumps(result, indent=2)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
    print(text)
