"""The reference map: a 2-D picture of embedding space that paths are drawn on.

Fitted once on reference points (the vocabulary tokens most frequent in the training
corpus) and stored with the checkpoint. It stores no corpus sequences, only token ids
and their map coordinates, so no training text can be read back from it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from . import io

MAP_TENSORS, MAP_META = "map.safetensors", "map.json"
MAP_KINDS = ("none", "pca")


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
        io.write_tensors(Path(folder) / MAP_TENSORS, {
            "mean": torch.from_numpy(self.mean_), "components": torch.from_numpy(self.components_),
            "embedding": torch.from_numpy(self.embedding_), "ref_ids": torch.from_numpy(self.ref_ids_)})
        io.write_json(Path(folder) / MAP_META, {"kind": self.kind, "n_reference": int(len(self.embedding_))})

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


def fit_reference_map(model, train_seqs: list[list[int]], kind: str = "pca", n_tokens: int = 2000,
                      seed: int = 0) -> PCAMap:
    """Fit the reference map on the model's standardised embeddings of frequent tokens."""
    if kind not in MAP_KINDS or kind == "none":
        raise ValueError(f"--map must be one of {', '.join(MAP_KINDS)}, got {kind!r}")
    ids = frequent_tokens(train_seqs, model.emission.support_mask.cpu(), n_tokens)
    points = model.token_states(torch.as_tensor(ids, device=model.emb_mean.device)).cpu().numpy()
    return PCAMap().fit(points, ids)


def load_reference_map(folder: Path) -> PCAMap | None:
    """The checkpoint's map, or None when it was trained with ``--map none``."""
    folder = Path(folder)
    if not (folder / MAP_META).is_file():
        return None
    meta = io.read_json(folder / MAP_META)
    if meta.get("kind") != "pca":
        raise ValueError(f"{folder / MAP_META} names map kind {meta.get('kind')!r}, which this version cannot read")
    return PCAMap.from_tensors(io.read_tensors(folder / MAP_TENSORS))


def describe(meta_path: Path) -> dict:
    return json.loads(Path(meta_path).read_text()) if Path(meta_path).is_file() else {"kind": "none"}
