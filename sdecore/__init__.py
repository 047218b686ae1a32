"""sdecore: text generation as a stochastic differential equation over token embeddings.

    dX = mu(X, t) dt + s * sigma(X, t) dW

with neural drift ``mu`` and diffusion ``sigma`` fitted on LLM-written text (after
arXiv 2408.11863). See DESIGN.md for the model.
"""

import os

# After numba (UMAP) has run, idle OpenMP threads that spin can slow torch in the same
# process many times over; passive waiting must be set before either is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .checkpoint import Checkpoint, load_checkpoint  # noqa: E402
from .config import DATA_CREDIT, FORMAT_VERSION, ModelConfig, TrainConfig  # noqa: E402
from .data import corpus_texts, load_corpus, split_by_prompt  # noqa: E402
from .embedding import Embedder  # noqa: E402
from .emission import GaussianEmission  # noqa: E402
from .model import TextSDE  # noqa: E402
from .simulate import Paths, path_texts, simulate_paths  # noqa: E402
from .train import train_model  # noqa: E402

__all__ = [
    "DATA_CREDIT", "FORMAT_VERSION", "ModelConfig", "TrainConfig",
    "corpus_texts", "load_corpus", "split_by_prompt",
    "Embedder", "GaussianEmission", "TextSDE",
    "Checkpoint", "load_checkpoint",
    "Paths", "path_texts", "simulate_paths",
    "train_model",
]
__version__ = "0.1.0"
