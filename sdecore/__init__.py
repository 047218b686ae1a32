"""sdecore: text generation as a stochastic differential equation over token embeddings.

    dX = mu(X, t) dt + s * sigma(X, t) dW

with neural drift ``mu`` and diffusion ``sigma`` fitted on LLM-written text (after
arXiv 2408.11863). The model, the contracts and the code layout are described in the
repository's ``docs/design.md``.

The public names below are loaded on first use (PEP 562), so ``import sdecore`` itself
loads neither torch nor any optional dependency (docs/design.md §6.2).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "DATA_CREDIT": "config", "FORMAT_VERSION": "config", "ModelConfig": "config", "TrainConfig": "config",
    "LIMITS": "limits", "SOLVERS": "limits",
    "load_corpus": "data", "split_by_prompt": "data",
    "Embedder": "embedding",
    "GaussianEmission": "emission",
    "TextSDE": "model", "ScaledSDE": "model",
    "Checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
    "Paths": "simulate", "path_texts": "simulate", "simulate_paths": "simulate",
    "train_model": "train",
    "evaluate_checkpoint": "evaluate", "write_report": "evaluate",
}
__all__ = [
    "DATA_CREDIT", "FORMAT_VERSION", "LIMITS", "SOLVERS", "Checkpoint", "Embedder", "GaussianEmission",
    "ModelConfig", "Paths", "ScaledSDE", "TextSDE", "TrainConfig", "evaluate_checkpoint", "load_checkpoint",
    "load_corpus", "path_texts", "simulate_paths", "split_by_prompt", "train_model", "write_report",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sdecore' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .checkpoint import Checkpoint, load_checkpoint
    from .config import DATA_CREDIT, FORMAT_VERSION, ModelConfig, TrainConfig
    from .data import load_corpus, split_by_prompt
    from .embedding import Embedder
    from .emission import GaussianEmission
    from .evaluate import evaluate_checkpoint, write_report
    from .limits import LIMITS, SOLVERS
    from .model import ScaledSDE, TextSDE
    from .simulate import Paths, path_texts, simulate_paths
    from .train import train_model
