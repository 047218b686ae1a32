"""Optional dependencies, imported where they are used, with an error that names the extra
to install (docs/design.md §6.2).

``pip install .`` brings what loading a model, sampling, training and ``info`` need; the rest
comes in extras: ``dashboard``, ``umap``, ``hub``, ``eval`` (``requirements.txt`` installs all).
"""

from __future__ import annotations

import importlib
from types import ModuleType

# module -> (extra, the distribution pip installs)
OPTIONAL = {
    "umap": ("umap", "umap-learn"),
    "sklearn": ("umap", "scikit-learn"),
    "datasets": ("hub", "datasets"),
    "transformers": ("hub", "transformers"),
    "sentence_transformers": ("eval", "sentence-transformers"),
    "sacrebleu": ("eval", "sacrebleu"),
    "rouge_score": ("eval", "rouge-score"),
    "streamlit": ("dashboard", "streamlit"),
    "plotly": ("dashboard", "plotly"),
}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (a name in :data:`OPTIONAL`, or a submodule of one) for ``purpose``
    ("the UMAP map", ...), or raise :class:`MissingExtra` with a one-line fix."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the package is there but one of its own imports failed: not a missing extra
        extra, dist = OPTIONAL[top]
        raise MissingExtra(f"{purpose} needs the '{extra}' extra ({dist} is not installed): "
                           f"pip install 'sdecore[{extra}]' (or pip install -r requirements.txt)") from None
