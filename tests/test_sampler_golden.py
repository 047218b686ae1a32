"""The sampler's output on the shipped model, pinned: the same seed gives the same tokens as
when ``tests/data/sampler_golden.json`` was written, for each solver, scale and path count
(and batch sizes that split the decode into blocks). Any change to the sampler's speed or
memory must leave these unchanged.

The file names the shipped weights' SHA-256; after retraining ``assets/model`` regenerate it:

    python tests/test_sampler_golden.py --write
"""

import hashlib
import json
import sys
from pathlib import Path

import pytest
from conftest import SHIPPED_MODEL, needs_shipped_model

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "data" / "sampler_golden.json"
PROMPTS = ("How can I improve my sleep?", "Write a short poem about the sea.")
SETTINGS = [  # (prompt index, paths, tokens, scale, solver, substeps, seed, temperature)
    (0, 8, 16, 0.0, "em", 1, 0, 0.0),
    (0, 8, 16, 0.5, "em", 1, 0, 0.0),
    (0, 8, 16, 1.0, "em", 2, 7, 0.0),
    (1, 4, 12, 1.0, "euler", 1, 3, 0.0),
    (1, 4, 12, 1.0, "srk", 1, 3, 0.0),
    (0, 3, 10, 0.5, "em", 1, 5, 0.8),
    (1, 600, 4, 1.0, "em", 1, 1, 0.0),  # more paths than one decode block
]


pytestmark = needs_shipped_model


def _weights_hash() -> str:
    return hashlib.sha256((Path(SHIPPED_MODEL) / "weights.safetensors").read_bytes()).hexdigest()


def _outputs(ckpt) -> list[dict]:
    from sdecore import simulate_paths

    out = []
    for p, paths, tokens, scale, solver, substeps, seed, temperature in SETTINGS:
        r = simulate_paths(ckpt.model, ckpt.embedder, PROMPTS[p], paths=paths, tokens=tokens, diffusion_scale=scale,
                           solver=solver, substeps=substeps, seed=seed, temperature=temperature)
        out.append({"token_ids": r.token_ids.tolist(), "diverged_at": r.diverged_at.tolist()})
    return out


@pytest.fixture(scope="module")
def shipped():
    from sdecore import load_checkpoint

    return load_checkpoint(SHIPPED_MODEL)


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.is_file():
        pytest.fail(f"{GOLDEN} is missing; write it with: python tests/test_sampler_golden.py --write")
    return json.loads(GOLDEN.read_text())


def test_the_shipped_model_is_the_one_pinned(golden):
    assert golden["weights_sha256"] == _weights_hash(), (
        "assets/model changed since the golden file was written; regenerate it with "
        "python tests/test_sampler_golden.py --write")


def test_the_sampler_gives_the_pinned_tokens(golden, shipped):
    got = _outputs(shipped)
    for setting, want, have in zip(SETTINGS, golden["outputs"], got):
        assert have == want, setting


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_sampler_golden.py --write")
    sys.path.insert(0, str(ROOT))
    from sdecore import load_checkpoint

    GOLDEN.write_text(json.dumps({"weights_sha256": _weights_hash(), "settings": SETTINGS,
                                  "outputs": _outputs(load_checkpoint(SHIPPED_MODEL))}) + "\n")
    print(f"wrote {GOLDEN}")
