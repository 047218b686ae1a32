"""Models trained from the Train page: the training launcher and the folders it writes."""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

import sdecore
from sdecore.evaluate import write_report
from sdecore.runtime import resolve_device

MODEL_SIZES = {"small (fast)": 64, "medium": 128, "large (slow on a CPU)": 256}


def runs_dir() -> Path:
    """Where models trained in the dashboard go: `SDECORE_RUNS` or `runs/dashboard` in the repo."""
    env = os.environ.get("SDECORE_RUNS", "").strip()
    return Path(env).expanduser() if env else Path(__file__).resolve().parent.parent / "runs" / "dashboard"


def train_frame(frame: pd.DataFrame, name: str, epochs: int, hidden: int, batch_size: int,
                on_epoch: Callable[[dict], None] | None = None, out: Path | None = None,
                report: bool = False) -> tuple[Path, dict]:
    """Train a small text SDE on ``frame`` and return (model folder, history). With
    ``report`` the trained model is then evaluated on its validation split against the
    baselines, into report.json (`sdecore.evaluate.write_report`; slow: over a minute even
    for a tiny corpus on a CPU).

    The corpus is written to a temporary file that is removed afterwards: the model folder
    keeps only the checkpoint (its reference map stores token ids, not corpus text)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name).stem)[:40] or "corpus"
    out = out or runs_dir() / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    model_cfg = sdecore.ModelConfig(drift_hidden=hidden, diffusion_hidden=max(16, hidden // 2))
    train_cfg = sdecore.TrainConfig(epochs=epochs, batch_size=batch_size, map="pca")
    device = str(resolve_device("auto"))
    with tempfile.TemporaryDirectory(prefix="sdecore_corpus_") as tmp:
        path = Path(tmp) / f"{stem}.jsonl"
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
        history = sdecore.train_model(path, out, model_cfg, train_cfg, device=device, progress=False,
                                      on_epoch=on_epoch, overwrite=True)
        if report:
            write_report(out, path, embedder=None)  # the same rows, hence the same validation split
    return out, history


def trained_models() -> list[Path]:
    """Model folders trained earlier in the dashboard, newest first."""
    root = runs_dir()
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / "weights.safetensors").is_file() and (p / "config.json").is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
