"""Shared fixtures: the real embedder, a small corpus written for the tests, and a small
model trained on it once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_CORPUS = ROOT / "tests" / "data" / "tiny_corpus.jsonl"
HELPSTEER_DEV = ROOT.parent / "shared" / "data" / "helpsteer_dev.jsonl"
SHIPPED_MODEL = ROOT / "assets" / "model"

needs_helpsteer = pytest.mark.skipif(
    not HELPSTEER_DEV.is_file(), reason=f"shared HelpSteer rows not found at {HELPSTEER_DEV}")
needs_shipped_model = pytest.mark.skipif(
    not (SHIPPED_MODEL / "weights.safetensors").is_file(), reason="assets/model has not been trained")


def envelope_coverage(V, LV, alpha: float, beta: float) -> float:
    """Share of the finite (V, LV) pairs on or under the line LV = -alpha V + beta: how the
    tests judge a fitted Lyapunov envelope."""
    V, LV = np.asarray(V, dtype=np.float64).ravel(), np.asarray(LV, dtype=np.float64).ravel()
    ok = np.isfinite(V) & np.isfinite(LV)
    line = -alpha * V[ok] + beta
    return float(np.mean(LV[ok] <= line + 1e-9 * (np.abs(LV[ok]) + np.abs(line) + 1.0)))


@pytest.fixture(scope="session")
def embedder():
    from sdecore import Embedder

    return Embedder.default()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, embedder) -> Path:
    """A checkpoint trained for a few epochs on the tiny corpus (with a PCA map), then evaluated
    into its report.json, as `sdecore train` does."""
    from sdecore import ModelConfig, TrainConfig, train_model, write_report

    out = tmp_path_factory.mktemp("tiny_model")
    train_model(TINY_CORPUS, out, ModelConfig(drift_hidden=64, diffusion_hidden=32, readout_hidden=64),
                TrainConfig(epochs=4, batch_size=64, map="pca", seed=0), device="cpu", progress=False)
    write_report(out, TINY_CORPUS, embedder=embedder)
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt, embedder):
    from sdecore import load_checkpoint

    return load_checkpoint(tiny_ckpt, embedder=embedder)


def stopped_and_resumed(tmp_path: Path, model_config, device: str) -> tuple[dict, dict]:
    """Histories of a 3-epoch run on the tiny corpus (folder ``a``) and of the same run stopped
    after epoch 2 and resumed (folder ``b``): what --resume must make equal."""
    import json

    from sdecore import TrainConfig, train_model

    cfg = TrainConfig(epochs=3, batch_size=64, seed=1)
    train_model(TINY_CORPUS, tmp_path / "a", model_config, cfg, device=device, progress=False)

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(TINY_CORPUS, tmp_path / "b", model_config, cfg, device=device, progress=False,
                    on_epoch=stop_after_two)
    hb = train_model(TINY_CORPUS, tmp_path / "b", model_config, cfg, device=device, progress=False, resume=True)
    return json.loads((tmp_path / "a" / "history.json").read_text()), hb
