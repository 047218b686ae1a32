"""The engine calls behind the pages, cached.

The model's maps are a resource (one copy per process, `st.cache_resource`); every result
is data keyed by its inputs (`st.cache_data`), so moving a widget back and forth, or a second
session asking the same, reuses earlier work. The engine's work runs on the model's worker
(:mod:`dashboard.serving`), which batches the sessions' simulations. Each function takes the
model folder and a stamp of its files' modification times (:func:`dashboard.session.folder_stamp`),
so a folder rewritten on disk is reloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

import sdecore
from sdecore import analysis, interpret, processes
from sdecore.metrics import as_float64
from sdecore.refmap import PCAMap, load_reference_map
from sdecore.simulate import SampleRequest

from .serving import BACKGROUND, INTERACTIVE
from .session import N_REFERENCE, PAGE_LIMITS, env_number, model


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
    ck, _ = model(folder, stamp)
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
        ref_ids = ck.model.emission.frequent_tokens(N_REFERENCE).numpy()
        note = note or "this model has no stored reference map, so PCA of its most frequent tokens is shown"
    pca = PCAMap().fit(table[ref_ids], ref_ids)
    return {"stored": stored, "note": note,
            "pca": {"map": pca, "ref_xy": pca.embedding_.astype(np.float64), "ref_tokens": ck.embedder.tokens(ref_ids),
                    "label": "PCA of the reference tokens"}}


# ----------------------------------------------------------------------------- generation
@st.cache_data(show_spinner=False, max_entries=32)
def generate(folder: str, stamp: tuple, prompt: str, paths: int, tokens: int, scale: float, solver: str,
             substeps: int, seed: int, snap: bool) -> dict:
    """Sample paths with their states, drift and sigma^2 recorded, and their decoded text.

    states: (paths, steps + 1, dim) float32; drift_norm, sigma2: (paths, steps + 1), |mu| and sum sigma^2
    at the states; probs, token_ids: (paths, steps). Only the drift's norm is kept, to keep cached
    entries small (64 paths x 128 tokens of states is 12 MB).
    """
    ck, worker = model(folder, stamp)
    (res,) = worker.simulate([_request(prompt, paths, tokens, scale, solver, substeps, seed, snap)])
    texts = sdecore.path_texts(ck.embedder, res)
    ids = res.token_ids.numpy()
    return {
        "texts": texts, "token_ids": ids, "probs": res.probs.numpy().astype(np.float64),
        "token_strs": [ck.embedder.tokens([v for v in row if v >= 0]) for row in ids],
        "t": as_float64(res.times - res.times[0]), "diverged": res.diverged.numpy(),
        "diverged_at": res.diverged_at.numpy(), "states": res.states.numpy().astype(np.float32),
        "drift_norm": np.linalg.norm(as_float64(res.drift), axis=-1),
        "sigma2": as_float64(res.sigma2), "scale": float(scale), "dt": float(ck.model.config.dt),
        "prompt_tokens": ck.embedder.tokens(res.prompt_ids),
    }


@st.cache_data(show_spinner=False, max_entries=32)
def nearest_tokens(folder: str, stamp: tuple, prompt: str, paths: int, tokens: int, scale: float, solver: str,
                   substeps: int, seed: int, snap: bool) -> list[list[str]]:
    """Per path of :func:`generate` (same arguments), the token nearest to each recorded state
    ("" where the path had stopped): the map's hover, computed only when the map is drawn."""
    res = generate(folder, stamp, prompt, paths, tokens, scale, solver, substeps, seed, snap)
    ck, worker = model(folder, stamp)
    states = res["states"]
    ids = worker.take_derived(_request(prompt, paths, tokens, scale, solver, substeps, seed, snap))
    if ids is None:  # not prefetched
        ids = worker.call(lambda c: _nearest_ids(c, states), INTERACTIVE)
    ids = ids.reshape(states.shape[:2])
    return [[tok if v >= 0 else "" for v, tok in zip(row, ck.embedder.tokens([max(int(v), 0) for v in row]))]
            for row in ids]


def _request(prompt: str, paths: int, tokens: int, scale: float, solver: str, substeps: int, seed: int,
             snap: bool) -> SampleRequest:
    """The Generate page's run: the key its result is simulated, prefetched and found under."""
    return SampleRequest(prompt, paths=paths, tokens=tokens, diffusion_scale=scale, solver=solver, substeps=substeps,
                         seed=seed, snap=snap, record_states=True)


def _nearest_ids(ck: sdecore.Checkpoint, states) -> np.ndarray:
    """The emittable token nearest to each recorded state, flat (rows of ``states`` (..., dim))."""
    states = np.asarray(states, dtype=np.float32)
    return ck.model.emission.nearest_tokens(states.reshape(-1, states.shape[-1])).cpu().numpy()


# Prefetch only runs this small (the page's default is 8 x 24): a large one would hold the cores
# and the worker's memory for a step the user may never take.
PREFETCH_MAX_PATH_TOKENS = 2048


def prefetch_reach() -> int:
    """How many slider steps either side of the shown value are prefetched: ``SDECORE_PREFETCH``,
    default 1; 0 turns prefetching off (a busy server's cores stay with the sessions' own runs)."""
    return int(env_number("SDECORE_PREFETCH", 1, 0))


def neighbour_scales(scale: float, step: float, reach: int = 1, seen=()) -> list[float]:
    """The diffusion slider's values up to ``reach`` steps either side of ``scale`` (on the
    slider's grid and within its range), nearest first and, at equal distance, the larger first
    (a slider is usually moved up), leaving out ``seen``."""
    lo, hi = PAGE_LIMITS["diffusion_scale"]
    out = []
    for k in range(1, reach + 1):
        for v in (scale + k * step, scale - k * step):
            v = round(round(v / step) * step, 10)
            if lo <= v <= hi and v not in seen and v not in out:
                out.append(v)
    return out


def prefetch(folder: str, stamp: tuple, prompt: str, paths: int, tokens: int, scales: list[float], solver: str,
             substeps: int, seed: int, snap: bool, owner=None) -> int:
    """Ask the model's worker to simulate the Generate page's run at ``scales`` when it is idle,
    with the map's nearest tokens (:meth:`dashboard.serving.ModelWorker.prefetch`): a step of the
    slider is then answered without simulating. Only ``em`` runs of at most
    ``PREFETCH_MAX_PATH_TOKENS`` path-tokens; returns how many runs were queued."""
    if solver != "em" or paths * tokens > PREFETCH_MAX_PATH_TOKENS or not scales:
        return 0
    _, worker = model(folder, stamp)
    reqs = [_request(prompt, paths, tokens, s, solver, substeps, seed, snap) for s in scales]
    return worker.prefetch(reqs, owner=owner, derive=lambda c, r, p: _nearest_ids(c, p.states))


# ----------------------------------------------------------------------------- stability
@st.cache_data(show_spinner=False, max_entries=32)
def lyapunov(folder: str, stamp: tuple, prompt: str, paths: int, tokens: int, scale: float, substeps: int,
             seed: int) -> dict:
    """V, LV and the fitted envelope on unsnapped paths, with quadratic variation and autocorrelation."""
    ck, worker = model(folder, stamp)
    (res,) = worker.simulate([SampleRequest(prompt, paths=paths, tokens=tokens, diffusion_scale=scale,
                                            substeps=substeps, seed=seed, snap=False, record_states=True)],
                             BACKGROUND)
    curves, r2 = worker.call(lambda c: (analysis.lyapunov_curves(c.model, res), analysis.vocabulary_radius2(c.model)))
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


# The Stability page's sweep grids: the coarse one spans the slider's useful range, the fine one
# brackets the shipped model's critical scale (about 1.6 on both, README) in quarter steps.
SWEEP_GRIDS = {"coarse: 0 to 6": (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0),
               "fine: 0 to 3": tuple(0.25 * i for i in range(13))}


@st.cache_data(show_spinner=False, max_entries=16)
def sweep(folder: str, stamp: tuple, prompt: str, scales: tuple, paths: int, tokens: int, substeps: int,
          seed: int) -> dict:
    """The envelope at each diffusion scale and the critical scale (beta/alpha crossing radius^2).

    The bound describes the SDE, so the unsnapped paths are integrated with ``substeps``
    solver steps per token; the same seed (the same Brownian path) is used at every scale."""
    _, worker = model(folder, stamp)
    sw = worker.call(lambda c: analysis.stability_sweep(c.model, c.embedder, prompt, scales, paths=paths, tokens=tokens,
                                                        seed=seed, substeps=substeps))
    return {"scales": sw.scales, "alpha": sw.alpha, "beta": sw.beta, "ultimate": sw.ultimate,
            "diverged_share": sw.diverged_share, "radius2": sw.radius2, "critical": sw.critical}


# ----------------------------------------------------------------------------- trajectories
@st.cache_data(show_spinner=False, max_entries=32)
def trajectory(folder: str, stamp: tuple, text: str) -> dict:
    """A real text's path, the drift's one-step and free-running predictions, per-token losses."""
    _, worker = model(folder, stamp)
    tr = worker.call(lambda c: analysis.text_trajectory(c.model, c.embedder, text, max_tokens=256), INTERACTIVE)
    return {"tokens": tr.tokens, "states": tr.states, "one_step": tr.one_step, "free_run": tr.free_run,
            "drift_loss": tr.drift_loss, "diffusion_loss": tr.diffusion_loss, "nll": tr.nll, "sigma": tr.sigma}


# ----------------------------------------------------------------------------- same noise, several scales
@st.cache_data(show_spinner=False, max_entries=32)
def compare(folder: str, stamp: tuple, prompt: str, scales: tuple, paths: int, tokens: int, seed: int,
            snap: bool) -> dict:
    """The drift-only run and one run per scale on ``seed`` (one Brownian path), batched with the
    other sessions' simulations (:func:`sdecore.interpret.compare_scales`): per scale the paths'
    token strings, each path's first departure from the drift-only text and the share that has left
    by each step."""
    ck, worker = model(folder, stamp)
    cmp = interpret.comparison(worker.simulate(interpret.scale_requests(prompt, scales, paths=paths, tokens=tokens,
                                                                        seed=seed, snap=snap)))

    def strs(ids: np.ndarray) -> list[list[str]]:
        return [ck.embedder.tokens([int(v) for v in row if v >= 0]) for row in ids]

    return {"scales": cmp.scales, "drift": strs(cmp.drift.token_ids.numpy())[0],
            "tokens": [strs(r.token_ids.numpy()) for r in cmp.runs], "first": [f.tolist() for f in cmp.first],
            "share": [s.tolist() for s in cmp.share], "diverged": [r.diverged.numpy().tolist() for r in cmp.runs],
            "texts": [[t["text"] for t in sdecore.path_texts(ck.embedder, r)] for r in cmp.runs]}


# ----------------------------------------------------------------------------- what the nets learned
@st.cache_data(show_spinner=False, max_entries=16)
def ranking(folder: str, stamp: tuple, among: int) -> dict:
    """Tokens ranked by the diffusion at their embedding (:func:`sdecore.interpret.diffusion_ranking`)."""
    _, worker = model(folder, stamp)
    return worker.call(lambda c: interpret.diffusion_ranking(c.model, c.embedder, among=among), INTERACTIVE)


@st.cache_data(show_spinner=False, max_entries=32)
def text_steps(folder: str, stamp: tuple, text: str) -> dict:
    """Along a text: the diffusion at each token and the drift's next tokens (:func:`sdecore.interpret.text_steps`)."""
    _, worker = model(folder, stamp)
    st_ = worker.call(lambda c: interpret.text_steps(c.model, c.embedder, text), INTERACTIVE)
    return {"tokens": st_.tokens, "sigma": st_.sigma, "next_tokens": st_.next_tokens, "next_probs": st_.next_probs}


@st.cache_data(show_spinner=False, max_entries=16)
def attractor(folder: str, stamp: tuple, prompt: str) -> dict:
    """Where the drift alone leads from ``prompt`` and the scales that escape it
    (:func:`sdecore.interpret.drift_attractor`); a background job: it runs about 8 x 128 paths' steps."""
    _, worker = model(folder, stamp)
    a = worker.call(lambda c: interpret.drift_attractor(c.model, c.embedder, prompt), BACKGROUND)
    return dict(vars(a))
