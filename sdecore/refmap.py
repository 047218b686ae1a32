"""The reference map: a 2-D picture of embedding space that paths are drawn on (docs/design.md §4.5).

Fitted once on reference points — the vocabulary tokens most frequent in the training
corpus and states of the model's own sample paths — and stored with the checkpoint. It
stores no corpus sequences, only token ids, their map coordinates and the transform's
parameters, so no training text can be read back from it.

Two kinds (sklearn conventions: ``fit``, ``transform``, trailing-underscore attributes):

- ``pca``: the principal-component plane; exact and instant.
- ``umap``: UMAP fitted once; new points are placed by a small MLP regressor trained on
  the map (far faster than ``umap.UMAP.transform``). Both are judged on held-out path
  states by ``sklearn.manifold.trustworthiness``, stored in ``map.json``. ``umap`` is
  imported only here, when a map is fitted.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckio
from .checkpoint import MAP_META, MAP_TENSORS
from .extras import require
from .limits import MAP_KINDS, check_choice


class PCAMap:
    """Principal-component projection, sklearn-style: ``fit`` then ``transform``.

    Fitted attributes: ``mean_`` (dim,), ``components_`` (2, dim), ``embedding_`` (n, 2)
    the reference points' coordinates, ``ref_ids_`` (n,) their token ids.
    """

    kind = "pca"

    def __init__(self, n_components: int = 2):
        self.n_components = n_components

    def fit(self, points: np.ndarray, ref_ids: np.ndarray | None = None) -> PCAMap:
        """points: (n, dim)."""
        points = np.asarray(points, dtype=np.float32)
        self.mean_ = points.mean(0)
        _, _, vt = np.linalg.svd(points - self.mean_, full_matrices=False)
        # Sign convention: the largest loading of each component is positive, so refits agree.
        signs = np.sign(vt[np.arange(self.n_components), np.abs(vt[: self.n_components]).argmax(1)])
        self.components_ = (vt[: self.n_components] * signs[:, None]).astype(np.float32)
        self.embedding_ = self.transform(points)
        self.ref_ids_ = np.asarray(ref_ids if ref_ids is not None else [], dtype=np.int64)
        return self

    def transform(self, points: np.ndarray) -> np.ndarray:
        """(n, dim) -> (n, 2)."""
        return (np.asarray(points, dtype=np.float32) - self.mean_) @ self.components_.T

    def save(self, folder: Path) -> None:
        ckio.write_tensors(Path(folder) / MAP_TENSORS, {
            "mean": torch.from_numpy(self.mean_), "components": torch.from_numpy(self.components_),
            "embedding": torch.from_numpy(self.embedding_), "ref_ids": torch.from_numpy(self.ref_ids_)})
        ckio.write_json(Path(folder) / MAP_META, {"kind": self.kind, "n_reference": int(len(self.embedding_))})

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> PCAMap:
        m = cls(int(t["components"].shape[0]))
        m.mean_, m.components_ = t["mean"].numpy(), t["components"].numpy()
        m.embedding_, m.ref_ids_ = t["embedding"].numpy(), t["ref_ids"].numpy()
        return m


def frequent_tokens(seqs: list[list[int]], support: torch.Tensor, n: int) -> np.ndarray:
    """The ``n`` most frequent emittable token ids in ``seqs`` (ties by id)."""
    counts = Counter(v for s in seqs for v in s if bool(support[v]))
    return np.array(sorted(counts, key=lambda v: (-counts[v], v))[:n], dtype=np.int64)


class UMAPMap:
    """UMAP of the reference points, with a regressor as its fast ``transform``.

    Fitted attributes: ``embedding_`` (n, 2) UMAP's coordinates of the reference points,
    ``ref_ids_`` token ids of the first ``len(ref_ids_)`` points, ``regressor_`` the MLP,
    ``quality_`` trustworthiness of both transforms on held-out points.
    """

    kind = "umap"

    def __init__(self, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0, hidden: int = 256,
                 steps: int = 1500):
        self.n_neighbors, self.min_dist, self.seed, self.hidden, self.steps = n_neighbors, min_dist, seed, hidden, steps

    def fit(self, points: np.ndarray, ref_ids: np.ndarray | None = None, holdout: np.ndarray | None = None,
            reducer=None) -> UMAPMap:
        """Fit UMAP to ``points`` (or take ``reducer``, a ``umap.UMAP`` already fitted to them with
        this map's settings) and the regressor to its coordinates."""
        umap, trustworthiness = require_umap()

        points = np.asarray(points, dtype=np.float32)
        if reducer is None:
            reducer = umap.UMAP(n_neighbors=self.n_neighbors, min_dist=self.min_dist, random_state=self.seed)
            reducer.fit(points)
        else:
            settings = (reducer.n_neighbors, reducer.min_dist, reducer.random_state, reducer.n_components)
            if settings != (self.n_neighbors, self.min_dist, self.seed, 2) or len(reducer.embedding_) != len(points):
                raise ValueError("the reducer was fitted with other settings than this map's, "
                                 "or to another number of points")
        self.embedding_ = np.asarray(reducer.embedding_, dtype=np.float32)
        self.ref_ids_ = np.asarray(ref_ids if ref_ids is not None else [], dtype=np.int64)
        self.regressor_ = _fit_regressor(points, self.embedding_, self.hidden, self.steps, self.seed)
        self.quality_ = {"n_reference": int(len(points))}
        if holdout is not None and len(holdout) > self.n_neighbors + 1:
            holdout = np.asarray(holdout, dtype=np.float32)
            k = min(10, len(holdout) // 2 - 1)
            self.quality_.update({
                "n_holdout": int(len(holdout)), "trustworthiness_k": k,
                "trustworthiness_regressor": float(trustworthiness(holdout, self.transform(holdout), n_neighbors=k)),
                "trustworthiness_umap_transform": float(
                    trustworthiness(holdout, reducer.transform(holdout), n_neighbors=k)),
            })
        return self

    def transform(self, points: np.ndarray) -> np.ndarray:
        """(n, dim) -> (n, 2) through the regressor."""
        with torch.no_grad():
            return self.regressor_(torch.as_tensor(np.asarray(points, dtype=np.float32))).numpy()

    def save(self, folder: Path) -> None:
        tensors = {f"regressor.{k}": v for k, v in self.regressor_.state_dict().items()}
        tensors.update({"embedding": torch.from_numpy(self.embedding_), "ref_ids": torch.from_numpy(self.ref_ids_)})
        ckio.write_tensors(Path(folder) / MAP_TENSORS, tensors)
        ckio.write_json(Path(folder) / MAP_META, {"kind": self.kind, "hidden": self.hidden,
                                                "n_neighbors": self.n_neighbors, "min_dist": self.min_dist,
                                                **self.quality_})

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], meta: dict) -> UMAPMap:
        m = cls(n_neighbors=meta.get("n_neighbors", 15), min_dist=meta.get("min_dist", 0.1),
                hidden=int(meta["hidden"]))
        m.embedding_, m.ref_ids_ = t["embedding"].numpy(), t["ref_ids"].numpy()
        dim = t["regressor.0.weight"].shape[1]
        m.regressor_ = _regressor(dim, m.hidden)
        m.regressor_.load_state_dict({k[10:]: v for k, v in t.items() if k.startswith("regressor.")})
        m.regressor_.eval()
        m.quality_ = {k: v for k, v in meta.items() if k not in ("kind", "hidden", "n_neighbors", "min_dist")}
        return m


def require_umap():
    """``umap`` and ``sklearn.manifold.trustworthiness``, or :class:`~sdecore.extras.MissingExtra`
    naming the ``umap`` extra. numba compiles on first use (tens of seconds), so they are
    imported only when a map is fitted."""
    purpose = "a UMAP reference map (--map umap)"
    return require("umap", purpose), require("sklearn.manifold", purpose).trustworthiness


def _regressor(dim: int, hidden: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden),
                               torch.nn.SiLU(), torch.nn.Linear(hidden, 2))


def _fit_regressor(points: np.ndarray, target: np.ndarray, hidden: int, steps: int, seed: int) -> torch.nn.Sequential:
    """An MLP from points (n, dim) to map coordinates (n, 2), full-batch Adam on squared error."""
    torch.manual_seed(seed)
    net = _regressor(points.shape[1], hidden)
    x, y = torch.from_numpy(points), torch.from_numpy(target)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        loss = (net(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def reference_points(model, embedder, train_tokens: list[list[int]], prompts: list[str], *, n_tokens: int = 2000,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The map's reference points: the standardised embeddings of the ``n_tokens`` most
    frequent training tokens, then states of the model's own sample paths (each token step's
    state before snapping) from half of ``prompts``; the other half's path states are held
    out to judge the transform.
    Returns (points, token ids of the first points, held-out points)."""
    from .simulate import simulate_paths

    ids = frequent_tokens(train_tokens, model.emission.support_mask.cpu(), n_tokens)
    tok_points = model.token_states(torch.as_tensor(ids, device=model.emb_mean.device)).cpu().numpy()
    states = []
    for k, prompt in enumerate(prompts):
        res = simulate_paths(model, embedder, prompt, paths=8, tokens=24, diffusion_scale=1.0, seed=seed + k,
                             snap=True, record_states=True)
        st = res.states[:, 1:].reshape(-1, model.dim)
        states.append(st[torch.isfinite(st).all(-1)].numpy())
    fit_states = np.concatenate(states[0::2]) if states[0::2] else np.zeros((0, model.dim), np.float32)
    held = np.concatenate(states[1::2]) if states[1::2] else np.zeros((0, model.dim), np.float32)
    return np.concatenate([tok_points, fit_states]).astype(np.float32), ids, held.astype(np.float32)


def fit_reference_map(model, embedder, train_tokens: list[list[int]], prompts: list[str], *, kind: str = "pca",
                      seed: int = 0) -> PCAMap | UMAPMap:
    """Fit the reference map of ``kind`` (``pca`` or ``umap``) on :func:`reference_points`."""
    if check_choice(kind, MAP_KINDS, "--map") == "none":
        raise ValueError("--map none fits no map; ask for pca or umap")
    points, ids, held = reference_points(model, embedder, train_tokens, prompts[:16], seed=seed)
    if kind == "pca":
        return PCAMap().fit(points, ids)
    return UMAPMap(seed=seed).fit(points, ids, held)


def load_reference_map(folder: Path) -> PCAMap | UMAPMap | None:
    """The checkpoint's map, or None when it was trained with ``--map none``."""
    folder = Path(folder)
    if not (folder / MAP_META).is_file():
        return None
    meta = ckio.read_json(folder / MAP_META)
    tensors = ckio.read_tensors(folder / MAP_TENSORS)
    if meta.get("kind") == "pca":
        return PCAMap.from_tensors(tensors)
    if meta.get("kind") == "umap":
        return UMAPMap.from_tensors(tensors, meta)
    raise ValueError(f"{folder / MAP_META} names map kind {meta.get('kind')!r}, which this version cannot read")
