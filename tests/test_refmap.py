"""The reference map: transform puts the map's own points back where fit put them, saves
and loads exactly, and stores no corpus sequences."""

import numpy as np
import pytest
import torch

from sdecore.refmap import PCAMap, UMAPMap, load_reference_map


def _clusters(n=240, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 5, (3, dim))
    labels = rng.integers(0, 3, n)
    return (centers[labels] + rng.normal(0, 1, (n, dim))).astype(np.float32), labels


def test_pca_is_the_principal_plane(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (500, 6)) * np.array([5, 2, 0.1, 0.1, 0.1, 0.1])
    m = PCAMap().fit(x, np.arange(500))
    # the first component is the highest-variance axis, the second the next
    assert abs(abs(m.components_[0, 0]) - 1) < 0.01 and abs(abs(m.components_[1, 1]) - 1) < 0.01
    np.testing.assert_allclose(m.transform(x), m.embedding_, atol=1e-5)
    m.save(tmp_path)
    back = load_reference_map(tmp_path)
    np.testing.assert_allclose(back.transform(x[:7]), m.transform(x[:7]), atol=1e-6)


@pytest.mark.slow
def test_umap_regressor_puts_points_back(tmp_path):
    x, labels = _clusters()
    m = UMAPMap(n_neighbors=10, steps=800).fit(x[:200], np.arange(50), holdout=x[200:])
    err = np.linalg.norm(m.transform(x[:200]) - m.embedding_, axis=1)
    extent = np.ptp(m.embedding_, axis=0).max()
    assert np.median(err) < 0.05 * extent
    q = m.quality_
    assert 0.5 < q["trustworthiness_regressor"] <= 1 and 0.5 < q["trustworthiness_umap_transform"] <= 1
    # clusters stay apart on the map
    emb = m.embedding_
    centres = np.array([emb[labels[:200] == k].mean(0) for k in range(3)])
    spread = max(emb[labels[:200] == k].std(0).max() for k in range(3))
    assert min(np.linalg.norm(centres[i] - centres[j]) for i in range(3) for j in range(i)) > 2 * spread
    m.save(tmp_path)
    back = load_reference_map(tmp_path)
    np.testing.assert_allclose(back.transform(x[:9]), m.transform(x[:9]), atol=1e-5)
    assert back.quality_["trustworthiness_regressor"] == q["trustworthiness_regressor"]


def test_map_in_a_checkpoint_holds_only_ids_and_coordinates(tiny_ckpt):
    from sdecore.checkpoint import read_tensors

    t = read_tensors(tiny_ckpt / "map.safetensors")
    assert set(t) == {"mean", "components", "embedding", "ref_ids"}
    assert t["ref_ids"].dtype == torch.int64 and t["embedding"].shape[1] == 2
    # reference tokens are distinct ids (frequency-ranked), not a sequence in corpus order
    assert len(set(t["ref_ids"].tolist())) == len(t["ref_ids"])
