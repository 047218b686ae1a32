"""Which model the pages show, its checkpoint, and the constants every page shares.

The checkpoint is a resource (one copy per process, `st.cache_resource`), keyed by the model
folder and a stamp of its files' modification times, so a folder rewritten on disk (a
retrained model) is reloaded.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import streamlit as st

import sdecore
from sdecore import limits
from sdecore.runtime import resolve_device

from .serving import ModelWorker

ROOT = Path(__file__).resolve().parent.parent
DATA_CREDIT = sdecore.DATA_CREDIT
DEFAULT_PROMPT = "How can I improve my sleep?"
# how a page's widgets keep their values: in the URL (so a view can be shared) and across pages
URL_BOUND = {"bind": "query-params", "persist_state": "session"}
N_REFERENCE = 1500  # reference tokens drawn on the maps (the most frequent in the training corpus)
SOLVERS = limits.SOLVERS
# The engine's ranges (sdecore.limits.LIMITS), with upper ends lowered so that one page run
# stays interactive on a 2-core CPU.
_PAGE_CAPS = {"paths": 64, "tokens": 128, "diffusion_scale": 10.0, "substeps": 16}
PAGE_LIMITS = {name: (limits.LIMITS[name][0], min(limits.LIMITS[name][1], cap)) for name, cap in _PAGE_CAPS.items()}

_STAMPED = ("config.json", "weights.safetensors", "history.json", "map.json", "map.safetensors",
            "report.json", "frontier.json")


# ----------------------------------------------------------------------------- model folder
def default_model_folder() -> Path:
    """`SDECORE_MODEL` if set, else `assets/model` next to the dashboard (not the cwd)."""
    env = os.environ.get("SDECORE_MODEL", "").strip()
    return Path(env).expanduser().resolve() if env else ROOT / "assets" / "model"


def active_model_folder() -> Path:
    """The model trained on the Train page when one is active, else the default."""
    chosen = st.session_state.get("active_model")
    return Path(chosen) if chosen else default_model_folder()


def folder_stamp(folder: Path) -> tuple:
    """Modification times and sizes of the checkpoint's files: part of every cache key."""
    out = []
    for name in _STAMPED:
        p = Path(folder) / name
        if p.is_file():
            s = p.stat()
            out.append((name, s.st_mtime_ns, s.st_size))
    return tuple(out)


def env_number(name: str, default: float, minimum: float) -> float:
    """A number from the environment, or ``default`` when unset; one line naming it when invalid."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not value >= minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


def owner(state) -> str:
    """A name for this browser session (kept in its ``st.session_state``), which the model's
    worker uses to replace a session's older prefetch with its newer one."""
    if "_owner" not in state:
        state["_owner"] = uuid.uuid4().hex
    return state["_owner"]


# ----------------------------------------------------------------------------- checkpoint
@st.cache_resource(show_spinner="Loading the model ...", max_entries=4)
def _load(folder: str, stamp: tuple) -> tuple[sdecore.Checkpoint, ModelWorker]:
    # Every engine call on the model goes through its worker (dashboard/serving.py): the sessions'
    # simulations are batched there, and no two computations compete for the cores.
    ck = sdecore.load_checkpoint(folder, device=resolve_device("auto"))
    return ck, ModelWorker(ck)


def model(folder: str, stamp: tuple) -> tuple[sdecore.Checkpoint, ModelWorker]:
    """The checkpoint in ``folder`` and the worker that runs the engine's work on it."""
    return _load(folder, stamp)


def checkpoint() -> tuple[sdecore.Checkpoint | None, str | None]:
    """(checkpoint, None), or (None, a readable reason it could not be loaded)."""
    folder = active_model_folder()
    try:
        ck, _ = _load(str(folder), folder_stamp(folder))
        return ck, None
    except (FileNotFoundError, ValueError, OSError, RuntimeError) as exc:
        return None, f"Cannot load the model at `{folder}`: {exc}"


def require_checkpoint() -> tuple[sdecore.Checkpoint, str, tuple]:
    """The active checkpoint, its folder and stamp; stops the page with an error otherwise."""
    ck, err = checkpoint()
    if ck is None:
        st.error(err + "\n\nSet `SDECORE_MODEL` to a trained model folder, or train one on the **Train** page.")
        st.stop()
    folder = active_model_folder()
    return ck, str(folder), folder_stamp(folder)
