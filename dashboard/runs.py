"""Models trained from the Train page: the training launcher, its queue and the folders it writes.

A server runs ``SDECORE_TRAIN_SLOTS`` trainings at a time (default 1: on a small server a second
one only halves the speed of both and of every session's simulations); the others wait their
turn in arrival order, and their pages show their place in the queue. Each run gets a folder of
its own, and the folders are kept within ``SDECORE_RUNS_QUOTA_MB`` (default 500 MB) by removing the
oldest first (docs/design.md §7).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch

import sdecore
from sdecore.evaluate import write_report
from sdecore.runtime import resolve_device

from .serving import THREADS
from .session import env_number

MODEL_SIZES = {"small (fast)": 64, "medium": 128, "large (slow on a CPU)": 256}


def runs_dir() -> Path:
    """Where models trained in the dashboard go: `SDECORE_RUNS` or `runs/dashboard` in the repo."""
    env = os.environ.get("SDECORE_RUNS", "").strip()
    return Path(env).expanduser() if env else Path(__file__).resolve().parent.parent / "runs" / "dashboard"


def train_slots() -> int:
    """How many Train-page runs a server runs at once: `SDECORE_TRAIN_SLOTS`, default 1."""
    return int(env_number("SDECORE_TRAIN_SLOTS", 1, 1))


def runs_quota_mb() -> float:
    """The disk the Train page's folders may take together: `SDECORE_RUNS_QUOTA_MB`, default 500."""
    return env_number("SDECORE_RUNS_QUOTA_MB", 500.0, 1.0)


def activate(session_state, folder: str | Path | None, name: str = "") -> None:
    """Make ``folder`` the session's active model (None: back to the default), moving the
    session's use from the folder it showed before (:func:`use`)."""
    previous = session_state.get("active_model")
    if folder is not None:
        use(folder)
        session_state["active_model"], session_state["active_name"] = str(folder), name
    else:
        session_state.pop("active_model", None)
    release(previous)


class TrainingQueue:
    """First come, first served slots for trainings, shared by every session of the server."""

    def __init__(self, slots: int):
        self.slots = slots
        self._cond = threading.Condition()
        self._running = 0
        self._waiting: list[object] = []

    @contextmanager
    def slot(self, on_wait: Callable[[int], None] | None = None, poll_s: float = 0.5) -> Iterator[None]:
        """Hold a training slot for the ``with`` block, waiting for one first; while waiting,
        ``on_wait(place)`` is called every ``poll_s`` with the place in the queue (1 = next). A run
        that stops waiting (its page rerun, an error) leaves the queue."""
        ticket = object()
        with self._cond:
            self._waiting.append(ticket)
        started = False
        try:
            while True:
                with self._cond:
                    if self._running < self.slots and self._waiting[0] is ticket:
                        self._waiting.pop(0)
                        self._running += 1
                        started = True
                        break
                    place = self._waiting.index(ticket) + 1
                if on_wait is not None:
                    on_wait(place)
                with self._cond:
                    self._cond.wait(poll_s)
            yield
        finally:
            with self._cond:
                if started:
                    self._running -= 1
                elif ticket in self._waiting:
                    self._waiting.remove(ticket)
                self._cond.notify_all()


_QUEUE_LOCK = threading.Lock()
_QUEUES: dict[int, TrainingQueue] = {}


def training_queue() -> TrainingQueue:
    """The server's training queue (one per process, sized by :func:`train_slots`)."""
    slots = train_slots()
    with _QUEUE_LOCK:
        return _QUEUES.setdefault(slots, TrainingQueue(slots))


def new_run_folder(name: str) -> Path:
    """A folder of its own for a run on the corpus ``name``: its stem, the time, and a random
    suffix, so that two sessions training the same file in the same second never share one. It
    is in use (:func:`use`) from the start, so the quota never removes a run being written."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name).stem)[:40] or "corpus"
    root = runs_dir()
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-", dir=root))
    use(folder)
    return folder


def _size_mb(folder: Path) -> float:
    total = 0
    for p in folder.rglob("*"):
        try:
            total += p.stat().st_size if p.is_file() else 0
        except OSError:  # renamed or removed meanwhile (an atomic write, another session's quota)
            pass
    return total / 2**20


# Folders in use, with how many uses: a run being written, a model some session shows. A session
# that ends without switching away keeps its use, which only keeps a folder longer.
_IN_USE: dict[Path, int] = {}
_QUOTA_LOCK = threading.Lock()


def use(folder: str | Path) -> None:
    """One more use of ``folder``: :func:`enforce_quota` leaves it alone until it is released."""
    with _QUEUE_LOCK:
        key = Path(folder).resolve()
        _IN_USE[key] = _IN_USE.get(key, 0) + 1


def release(folder: str | Path | None) -> None:
    """One use of ``folder`` fewer (nothing for None or a folder not in use)."""
    if folder is None:
        return
    with _QUEUE_LOCK:
        key = Path(folder).resolve()
        if _IN_USE.get(key, 0) > 1:
            _IN_USE[key] -= 1
        else:
            _IN_USE.pop(key, None)


def enforce_quota(keep: set[Path] = frozenset(), quota_mb: float | None = None) -> list[Path]:
    """Remove the oldest run folders until they fit in ``quota_mb`` (``SDECORE_RUNS_QUOTA_MB``),
    never one named in ``keep`` or in use (:func:`use`); returns the folders removed. One pass at a
    time per server; folders that vanish meanwhile are skipped."""
    quota = runs_quota_mb() if quota_mb is None else quota_mb
    root = runs_dir()
    if not root.is_dir():
        return []
    with _QUOTA_LOCK:
        with _QUEUE_LOCK:
            keep = {Path(k).resolve() for k in keep} | set(_IN_USE)
        folders = []
        for p in root.iterdir():
            try:
                if p.is_dir() and not p.name.startswith("."):
                    folders.append((p.stat().st_mtime, p))
            except OSError:
                continue
        folders = [p for _, p in sorted(folders)]
        sizes = {p: _size_mb(p) for p in folders}
        total, removed = sum(sizes.values()), []
        for p in folders:
            if total <= quota:
                break
            if p.resolve() in keep:
                continue
            shutil.rmtree(p, ignore_errors=True)
            total -= sizes[p]
            removed.append(p)
        return removed


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
    fresh = out is None
    out = out or new_run_folder(name)
    try:
        return out, _train(frame, stem, out, epochs, hidden, batch_size, on_epoch, report)
    except BaseException:
        if fresh:
            release(out)
            if not (out / "weights.safetensors").is_file():
                shutil.rmtree(out, ignore_errors=True)  # a failed run leaves no folder behind
        raise


def _train(frame: pd.DataFrame, stem: str, out: Path, epochs: int, hidden: int, batch_size: int,
           on_epoch: Callable[[dict], None] | None, report: bool) -> dict:
    # this session's thread may have started while a prefetch had lowered torch's count (serving.THREADS)
    torch.set_num_threads(THREADS)
    model_cfg = sdecore.ModelConfig(drift_hidden=hidden, diffusion_hidden=max(16, hidden // 2), readout_hidden=hidden)
    train_cfg = sdecore.TrainConfig(epochs=epochs, batch_size=batch_size, map="pca")
    device = str(resolve_device("auto"))
    with tempfile.TemporaryDirectory(prefix="sdecore_corpus_") as tmp:
        path = Path(tmp) / f"{stem}.jsonl"
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
        history = sdecore.train_model(path, out, model_cfg, train_cfg, device=device, progress=False,
                                      on_epoch=on_epoch, overwrite=(Path(out) / "weights.safetensors").is_file())
        if report:
            write_report(out, path, embedder=None)  # the same rows, hence the same validation split
    return history


def trained_models() -> list[Path]:
    """Model folders trained earlier in the dashboard, newest first."""
    root = runs_dir()
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / "weights.safetensors").is_file() and (p / "config.json").is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
