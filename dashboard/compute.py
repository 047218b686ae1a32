"""Cached loaders and computations behind the pages.

The model and its maps are resources (one copy per process, `st.cache_resource`); every
result is data keyed by its inputs (`st.cache_data`), so moving a widget back and forth
reuses earlier work. Each cached function takes the model folder and a stamp of its files'
modification times, so a folder rewritten on disk (a retrained model) is reloaded.
"""

from __future__ import annotations

import os

# Idle OpenMP threads that spin make torch tens of times slower on a busy 2-core machine
# (measured: 28 s instead of 1 s for one simulation); passive waiting must be set before
# torch is first imported, and importing torch here before sdecore would skip sdecore's own setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import streamlit as st  # noqa: E402
import torch  # noqa: E402

import sdecore  # noqa: E402
from sdecore import analysis, processes  # noqa: E402
from sdecore.refmap import PCAMap, load_reference_map  # noqa: E402

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - comes with scikit-learn, a runtime requirement
    threadpool_limits = None
if threadpool_limits is not None:
    # The dashboard's matrices are small (a 1500 x 384 PCA), and OpenBLAS's worker threads
    # spin: on a busy 2-core CPU one SVD took 8 s threaded against 0.09 s on one thread.
    # `streamlit run` imports numpy before this file, so an environment variable would come too late.
    threadpool_limits(limits=1, user_api="blas")

ROOT = Path(__file__).resolve().parent.parent
DATA_CREDIT = sdecore.DATA_CREDIT
# Tighter than the engine's limits (sdecore.config.LIMITS) so a 2-core CPU stays interactive.
PAGE_LIMITS = {"paths": (1, 64), "tokens": (1, 128), "diffusion_scale": (0.0, 10.0), "substeps": (1, 16)}
SOLVERS = sdecore.config.SOLVERS
DEFAULT_PROMPT = "How can I improve my sleep?"
N_REFERENCE = 1500  # reference tokens drawn on the maps (the most frequent in the training corpus)
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


@st.cache_resource(show_spinner="Loading the model ...", max_entries=4)
def _load(folder: str, stamp: tuple) -> tuple[sdecore.Checkpoint, threading.Lock]:
    device = sdecore.runtime.resolve_device("auto")
    # The lock serialises calls into one model: simulate_paths sets the model's diffusion
    # scale for the duration of a run, so two sessions must not run it at once.
    return sdecore.load_checkpoint(folder, device=device), threading.Lock()


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


def _model(folder: str, stamp: tuple) -> tuple[sdecore.Checkpoint, threading.Lock]:
    return _load(folder, stamp)


# ----------------------------------------------------------------------------- maps
@st.cache_resource(show_spinner="Preparing the reference map ...", max_entries=4)
def maps(folder: str, stamp: tuple) -> dict:
    """Maps a path can be drawn on: "stored" (the checkpoint's reference map, or None) and
    "pca" (PCA of the reference tokens), each a dict with the fitted ``map``, the reference
    points' 2-D coordinates ``ref_xy`` (n, 2) and their ``ref_tokens``; "note" says why the
    stored map is not used, if it is not.

    Without a stored map the reference tokens are the ones the emission's unigram prior
    ranks highest, i.e. the most frequent in the training corpus.
    """
    ck, _ = _model(folder, stamp)
    table = ck.model.emission.table.detach().cpu().numpy()
    stored, note = None, None
    try:
        fitted = load_reference_map(Path(folder))
    except (ValueError, FileNotFoundError) as exc:
        fitted, note = None, f"the stored map cannot be read ({exc}); PCA is shown"
    if fitted is not None and len(fitted.ref_ids_):
        # The first len(ref_ids_) reference points are tokens (a UMAP map adds path states after them).
        n = min(N_REFERENCE, len(fitted.ref_ids_))
        ref_ids = np.asarray(fitted.ref_ids_[:n], dtype=np.int64)
        stored = {"map": fitted, "ref_xy": np.asarray(fitted.embedding_[:n], dtype=np.float64),
                  "ref_tokens": ck.embedder.tokens(ref_ids), "label": f"reference map ({fitted.kind.upper()})",
                  "quality": getattr(fitted, "quality_", None)}
    else:
        em = ck.model.emission
        prior = em.log_prior.detach().cpu().masked_fill(~em.support_mask.cpu(), -np.inf)
        ref_ids = torch.argsort(prior, descending=True)[:N_REFERENCE].numpy()
        note = note or "this model has no stored reference map, so PCA of its most frequent tokens is shown"
    pca = PCAMap().fit(table[ref_ids], ref_ids)
    return {"stored": stored, "note": note,
            "pca": {"map": pca, "ref_xy": pca.embedding_.astype(np.float64), "ref_tokens": ck.embedder.tokens(ref_ids),
                    "label": "PCA of the reference tokens"}}


def projection(folder: str, stamp: tuple, use_pca: bool) -> dict:
    """The map to draw on: the stored one unless PCA is asked for or there is none."""
    m = maps(folder, stamp)
    return m["pca"] if use_pca or m["stored"] is None else m["stored"]


def project(proj: dict, points: np.ndarray) -> np.ndarray:
    """Map coordinates of points (n, dim) -> (n, 2); NaN rows (stopped paths) stay NaN."""
    pts = np.asarray(points, dtype=np.float64)
    ok = np.isfinite(pts).all(-1)
    out = np.full((len(pts), 2), np.nan)
    if ok.any():
        out[ok] = np.asarray(proj["map"].transform(pts[ok].astype(np.float32)), dtype=np.float64)
    return out


def _nearest(ck: sdecore.Checkpoint, points: np.ndarray) -> np.ndarray:
    """Nearest emittable token (Euclidean, standardised space) of each point: (n, dim) -> (n,); -1 for NaN."""
    em = ck.model.emission
    p = torch.as_tensor(np.nan_to_num(points), dtype=torch.float32, device=em.table.device)
    d2 = em.table_sq.sum(-1)[None, :] - 2 * p @ em.table.T
    d2 = d2.masked_fill(~em.support_mask[None, :], float("inf"))
    ids = d2.argmin(-1).cpu().numpy()
    return np.where(np.isfinite(points).all(-1), ids, -1)


def _np(t) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy().astype(np.float64)


# ----------------------------------------------------------------------------- generation
@st.cache_data(show_spinner=False, max_entries=32)
def generate(folder: str, stamp: tuple, prompt: str, paths: int, tokens: int, scale: float, solver: str,
             substeps: int, seed: int, snap: bool) -> dict:
    """Sample paths with their states, drift and sigma^2 recorded, decoded text and nearest tokens.

    states: (paths, steps + 1, dim) float32; drift_norm, sigma2: (paths, steps + 1), |mu| and sum sigma^2
    at the states; probs, token_ids: (paths, steps). Only the drift's norm is kept, to keep cached
    entries small (64 paths x 128 tokens of states is 12 MB).
    """
    ck, lock = _model(folder, stamp)
    with lock:
        res = sdecore.simulate_paths(ck.model, ck.embedder, prompt, paths=paths, tokens=tokens,
                                     diffusion_scale=scale, solver=solver, substeps=substeps, seed=seed,
                                     snap=snap, record_states=True)
        texts = sdecore.path_texts(ck.embedder, res)
        states = _np(res.states)
        nearest = _nearest(ck, states.reshape(-1, states.shape[-1])).reshape(states.shape[:2])
    ids = res.token_ids.numpy()
    return {
        "texts": texts, "token_ids": ids, "probs": res.probs.numpy().astype(np.float64),
        "token_strs": [ck.embedder.tokens([v for v in row if v >= 0]) for row in ids],
        "nearest": [ck.embedder.tokens([max(int(v), 0) for v in row]) for row in nearest],
        "nearest_ok": nearest >= 0, "t": _np(res.times - res.times[0]), "diverged": res.diverged.numpy(),
        "diverged_at": res.diverged_at.numpy(), "states": states.astype(np.float32),
        "drift_norm": np.linalg.norm(_np(res.drift), axis=-1),
        "sigma2": _np(res.sigma2), "scale": float(scale), "dt": float(ck.model.config.dt),
        "prompt_tokens": ck.embedder.tokens(res.prompt_ids),
    }


def step_magnitudes(result: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per step k -> k+1: drift |mu_k dt| and diffusion s sqrt(sum sigma^2_k dt), each (paths, steps).

    These are the sizes of the two terms of one Euler-Maruyama step, dx = mu dt + s sigma dW
    (E|s sigma dW|^2 = s^2 sum sigma^2 dt)."""
    dt, s = result["dt"], result["scale"]
    drift = result["drift_norm"][:, :-1] * dt
    diff = s * np.sqrt(result["sigma2"][:, :-1] * dt)
    return drift, diff


# ----------------------------------------------------------------------------- stability
@st.cache_data(show_spinner=False, max_entries=32)
def lyapunov(folder: str, stamp: tuple, prompt: str, paths: int, tokens: int, scale: float, substeps: int,
             seed: int) -> dict:
    """V, LV and the fitted envelope on unsnapped paths, with quadratic variation and autocorrelation."""
    ck, lock = _model(folder, stamp)
    with lock:
        res = sdecore.simulate_paths(ck.model, ck.embedder, prompt, paths=paths, tokens=tokens,
                                     diffusion_scale=scale, substeps=substeps, seed=seed, snap=False,
                                     record_states=True)
        curves = analysis.lyapunov_curves(ck.model, res)
        r2 = analysis.vocabulary_radius2(ck.model)
    x = res.states.numpy()
    dt = float(ck.model.config.dt)
    out = {"t": curves.t, "V": curves.V, "LV": curves.LV, "alpha": curves.envelope.alpha,
           "beta": curves.envelope.beta, "ultimate": curves.envelope.ultimate, "bound": curves.bound,
           "mean_V": curves.mean_V, "radius2": r2, "diverged_share": float(res.diverged.float().mean()),
           "qv": processes.quadratic_variation(x), "isigma2": processes.integrated_sigma2(res.sigma2, dt, scale)}
    max_lag = min(10, x.shape[1] - 2)
    try:
        out["acf"] = processes.increment_autocorrelation(x, max_lag) if max_lag >= 1 else None
    except ValueError:
        out["acf"] = None
    return out


SWEEP_SCALES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


@st.cache_data(show_spinner=False, max_entries=16)
def sweep(folder: str, stamp: tuple, prompt: str, scales: tuple, paths: int, tokens: int, substeps: int,
          seed: int) -> dict:
    """The envelope at each diffusion scale and the critical scale (beta/alpha crossing radius^2).

    The bound describes the SDE, so the unsnapped paths are integrated with ``substeps``
    solver steps per token; the same seed (the same Brownian path) is used at every scale."""
    ck, lock = _model(folder, stamp)
    with lock:
        sw = analysis.stability_sweep(ck.model, ck.embedder, prompt, scales, paths=paths, tokens=tokens, seed=seed,
                                      substeps=substeps)
    return {"scales": sw.scales, "alpha": sw.alpha, "beta": sw.beta, "ultimate": sw.ultimate,
            "diverged_share": sw.diverged_share, "radius2": sw.radius2, "critical": sw.critical}


# ----------------------------------------------------------------------------- trajectories
@st.cache_data(show_spinner=False, max_entries=32)
def trajectory(folder: str, stamp: tuple, text: str) -> dict:
    """A real text's path, the drift's one-step and free-running predictions, per-token losses."""
    ck, lock = _model(folder, stamp)
    with lock:
        tr = analysis.text_trajectory(ck.model, ck.embedder, text, max_tokens=256)
    return {"tokens": tr.tokens, "states": tr.states, "one_step": tr.one_step, "free_run": tr.free_run,
            "drift_loss": tr.drift_loss, "diffusion_loss": tr.diffusion_loss, "nll": tr.nll, "sigma": tr.sigma}


def history_rows(history: dict) -> list[dict]:
    """Flat rows (epoch, split, loss, value) of a checkpoint's training history."""
    rows = []
    for e in history.get("epochs", []):
        for split in ("train", "validation"):
            for name, value in (e.get(split) or {}).items():
                if value is not None:
                    rows.append({"epoch": e["epoch"], "split": split, "loss": name, "value": float(value)})
    return rows


# ----------------------------------------------------------------------------- evaluation files
def evaluation_files(folder: str, stamp: tuple) -> dict:
    """report.json and frontier.json of the model folder: each the parsed dict, None when
    absent, or a string saying why it cannot be read."""
    out = {}
    for key, name in (("report", "report.json"), ("frontier", "frontier.json")):
        p = Path(folder) / name
        if not p.is_file():
            out[key] = None
            continue
        try:
            out[key] = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            out[key] = f"{p} cannot be read ({exc})"
    return out
