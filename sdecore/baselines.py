"""Discrete next-token baselines over WordPiece id sequences (docs/design.md §4.3).

Two n-gram models give the held-out token perplexity and top-k accuracy that the SDE's
Gaussian emission is compared with (``evaluate``'s ``unigram`` and ``bigram`` rows):

- :class:`UnigramLM`, add-alpha smoothed over the support ``S``:
  ``p(v) = (c_v + alpha) / (N + alpha |S|)``;
- :class:`KneserNeyBigramLM`, interpolated Kneser-Ney with absolute discount ``D`` over the
  (add-0.1 smoothed) continuation unigram.

The vocabulary is given by a boolean ``support`` mask ``(vocab,)``: the ids a model may emit
(special tokens excluded). Both models put all their probability on the support and a
non-zero probability on every support token; ids outside it get log-probability ``-inf``.

Counts are kept sparse (no ``vocab x vocab`` matrix: the vocabulary has 30,522 ids).
"""

from __future__ import annotations

import math

import numpy as np
import torch

CONTINUATION_SMOOTHING = 0.1  # add-0.1 on the Kneser-Ney continuation counts N1+(. w)


# --------------------------------------------------------------------------- helpers
def _check_support(support: torch.Tensor) -> torch.Tensor:
    if not isinstance(support, torch.Tensor) or support.ndim != 1 or support.dtype != torch.bool:
        raise ValueError("support must be a 1-D boolean tensor of shape (vocab,), e.g. Embedder.support_mask")
    if not bool(support.any()):
        raise ValueError("support is empty: at least one token id must be allowed")
    return support.detach().to("cpu").clone()


def _flatten(seqs, support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ids of ``seqs`` concatenated (T,) and each sequence's length (n_seqs,), validated.
    ``seqs`` is a list of id lists, or any object whose ``counted()`` gives that flat form
    already (``sdecore.tokendata.TokenSequences``: the counted part of each sequence)."""
    if hasattr(seqs, "counted"):
        ids, lengths = seqs.counted()
        ids, lengths = ids.to(torch.int64), lengths.to(torch.int64)
    else:
        lengths = torch.from_numpy(np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs)))
        ids = torch.from_numpy(np.fromiter((v for s in seqs for v in s), dtype=np.int64, count=int(lengths.sum())))
    vocab = support.numel()
    if ids.numel():
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"token ids must lie in [0, {vocab}); got ids from {int(ids.min())} to {int(ids.max())}")
        off = ~support[ids]
        if bool(off.any()):
            bad = sorted(set(ids[off].tolist()))[:5]
            raise ValueError(f"sequences hold ids outside the support (special tokens?), e.g. {bad}; drop them first")
    return ids, lengths


def _check_ids(ids: torch.Tensor, vocab: int, name: str) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.ndim != 1 or ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} must be a 1-D integer tensor of token ids")
    ids = ids.to("cpu", torch.long)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"{name} holds ids outside [0, {vocab})")
    return ids


def _sample_rows(logp: torch.Tensor, generator: torch.Generator, temperature: float) -> torch.Tensor:
    """Ids (b,) drawn from ``softmax(logp / temperature)`` row by row; argmax when temperature is 0."""
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if temperature == 0:
        return logp.argmax(dim=-1)
    probs = torch.softmax(logp.to(torch.float64) / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _pairs(flat: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjacent (prev, nxt) pairs of concatenated sequences ``flat`` (T,) with ``lengths`` (n_seqs,)."""
    last = torch.cumsum(lengths[lengths > 0], 0) - 1  # index of each non-empty sequence's final token
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[last] = False  # the final token has no successor in its sequence
    pos = keep.nonzero().squeeze(1)
    return flat[pos], flat[pos + 1]


# --------------------------------------------------------------------------- unigram
class UnigramLM:
    """Add-alpha smoothed unigram over the support.

    ``p(v) = (c_v + alpha) / (N + alpha |S|)`` for ``v`` in ``S`` (0 outside), where ``c_v`` is
    the count of ``v`` in the training sequences and ``N = sum_v c_v``.

    Fitted attributes: ``support_`` (vocab,) bool, ``counts_`` (vocab,) int64, ``alpha_``,
    ``log_probs_`` (vocab,) float64 with ``-inf`` outside the support.
    """

    def fit(self, seqs, support: torch.Tensor, alpha: float = 0.1) -> UnigramLM:
        """Count every token of ``seqs`` (lists of support ids, or token sequences, see
        ``_flatten``); ``alpha > 0``."""
        if not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha must be a finite number > 0 so no support token has zero probability, got {alpha}")
        support = _check_support(support)
        ids, _ = _flatten(seqs, support)
        counts = torch.bincount(ids, minlength=support.numel())
        return self._set(support, counts, float(alpha))

    def _set(self, support: torch.Tensor, counts: torch.Tensor, alpha: float) -> UnigramLM:
        self.support_, self.counts_, self.alpha_ = support, counts.to(torch.int64), alpha
        n, size = float(counts.sum()), int(support.sum())
        p = (counts.to(torch.float64) + alpha) / (n + alpha * size)  # (c_v + alpha) / (N + alpha |S|)
        self.log_probs_ = torch.where(support, torch.log(p), torch.tensor(-math.inf, dtype=torch.float64))
        return self

    @property
    def vocab_size(self) -> int:
        return self.support_.numel()

    def log_prob_rows(self, prev: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The next-token log-distribution for each of ``prev`` (b,): (b, vocab), the same row b times."""
        prev = _check_ids(prev, self.vocab_size, "prev")
        return self.log_probs_.to(dtype).expand(prev.numel(), -1).clone()

def unigram_log_prior(seqs, support: torch.Tensor, alpha: float) -> torch.Tensor:
    """The emission's prior: log-probabilities of the add-alpha :class:`UnigramLM` of ``seqs``,
    float32 (vocab,), 0 (not -inf) outside the support, where the emission masks anyway."""
    logp = UnigramLM().fit(seqs, support, alpha=alpha).log_probs_
    return torch.where(support.cpu(), logp, torch.zeros_like(logp)).to(torch.float32)


# --------------------------------------------------------------------------- Kneser-Ney bigram
class KneserNeyBigramLM:
    """Interpolated Kneser-Ney bigram, absolute discount ``D`` (Kneser & Ney 1995; form of Chen & Goodman 1999).

    For a context ``u`` seen as a left token ``c(u) > 0`` times::

        p(w|u) = max(c(u,w) - D, 0) / c(u) + D * N1+(u .) / c(u) * p_cont(w)

    and for an unseen context ``p(w|u) = p_cont(w)``. ``N1+(u .)`` is the number of distinct
    successors of ``u``. The continuation unigram ``p_cont(w) = N1+(. w) / N1+(. .)`` (distinct
    predecessors of ``w`` over distinct bigram types) is smoothed with add-0.1 on its counts so
    no support token has zero probability::

        p_cont(w) = (N1+(. w) + 0.1) / (N1+(. .) + 0.1 |S|)     for w in S, 0 outside.

    With ``0 < D <= 1`` every row sums to 1 over the support (the discounted mass
    ``D N1+(u .) / c(u)`` is exactly what the interpolation weight hands to ``p_cont``).
    Bigrams are the adjacent pairs inside each sequence, never across two sequences.

    Fitted attributes (sparse; no ``vocab x vocab`` matrix): ``support_`` (vocab,) bool,
    ``discount_``, ``pair_keys_`` (P,) int64 sorted keys ``u * vocab + w`` of the seen bigram
    types, ``pair_counts_`` (P,) int64 their counts ``c(u,w)``, ``indptr_`` (vocab + 1,) so that
    context ``u``'s pairs are ``pair_keys_[indptr_[u]:indptr_[u + 1]]``, ``context_counts_``
    (vocab,) ``c(u)``, ``n_follow_`` (vocab,) ``N1+(u .)``, ``log_p_cont_`` (vocab,) float64.
    """

    def fit(self, seqs, support: torch.Tensor, discount: float = 0.75) -> KneserNeyBigramLM:
        """Count the adjacent pairs inside each of ``seqs`` (lists of support ids, or token
        sequences, see ``_flatten``); ``0 < discount <= 1``."""
        if not math.isfinite(discount) or not 0 < discount <= 1:
            raise ValueError(f"discount must lie in (0, 1] so each row sums to 1 with no zero, got {discount}")
        support = _check_support(support)
        prev, nxt = _pairs(*_flatten(seqs, support))
        keys, counts = torch.unique(prev * support.numel() + nxt, sorted=True, return_counts=True)
        return self._set(support, keys, counts.to(torch.int64), float(discount))

    def _set(
        self, support: torch.Tensor, keys: torch.Tensor, counts: torch.Tensor, discount: float
    ) -> KneserNeyBigramLM:
        vocab = support.numel()
        self.support_, self.pair_keys_, self.pair_counts_, self.discount_ = support, keys, counts, discount
        left, right = keys // vocab, keys % vocab
        self.indptr_ = torch.searchsorted(keys, torch.arange(vocab + 1, dtype=torch.int64) * vocab)
        self.context_counts_ = torch.zeros(vocab, dtype=torch.int64).index_add_(0, left, counts)  # c(u)
        self.n_follow_ = torch.bincount(left, minlength=vocab)  # N1+(u .)
        n_precede = torch.bincount(right, minlength=vocab).to(torch.float64)  # N1+(. w)
        size = int(support.sum())
        s = CONTINUATION_SMOOTHING
        p_cont = (n_precede + s) / (keys.numel() + s * size)  # (N1+(. w) + 0.1) / (N1+(. .) + 0.1 |S|)
        self.log_p_cont_ = torch.where(support, torch.log(p_cont), torch.tensor(-math.inf, dtype=torch.float64))
        self._p_cont = torch.where(support, p_cont, torch.zeros_like(p_cont))
        return self

    @property
    def vocab_size(self) -> int:
        return self.support_.numel()

    def _backoff_weight(self, prev: torch.Tensor) -> torch.Tensor:
        """Weight of ``p_cont`` per context (b,): ``D N1+(u .) / c(u)``, or 1 for an unseen context."""
        c = self.context_counts_[prev].to(torch.float64)
        lam = self.discount_ * self.n_follow_[prev].to(torch.float64) / c.clamp_min(1)
        return torch.where(c > 0, lam, torch.ones_like(lam))

    def log_prob_rows(self, prev: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Next-token log-distributions (b, vocab) for contexts ``prev`` (b,); ``-inf`` outside the support.

        Each distinct context ``u`` gets the row ``log lambda(u) + log p_cont`` (its unseen successors),
        then its seen successors ``w`` are overwritten with ``log(max(c(u,w) - D, 0) / c(u) + lambda(u) p_cont(w))``
        from the sparse pair list; cost ``O(b * vocab + pairs of the distinct contexts)``.
        """
        prev = _check_ids(prev, self.vocab_size, "prev")
        ctx, inverse = torch.unique(prev, return_inverse=True)  # frequent contexts repeat within a batch
        lam = self._backoff_weight(ctx)  # (u,) float64, > 0
        rows = torch.log(lam).to(dtype).unsqueeze(1) + self.log_p_cont_.to(dtype).unsqueeze(0)  # (u, vocab)
        start = self.indptr_[ctx]
        lengths = self.indptr_[ctx + 1] - start
        total = int(lengths.sum())
        if total:
            row = torch.repeat_interleave(torch.arange(ctx.numel()), lengths)
            # position of each gathered pair inside the sorted pair list: its context's start + rank within it
            pair = torch.arange(total) + torch.repeat_interleave(start - (torch.cumsum(lengths, 0) - lengths), lengths)
            col = self.pair_keys_[pair] % self.vocab_size
            c_u = self.context_counts_[ctx][row].to(torch.float64)
            p = (self.pair_counts_[pair].to(torch.float64) - self.discount_).clamp_min(0) / c_u
            rows[row, col] = torch.log(p + lam[row] * self._p_cont[col]).to(dtype)
        return rows[inverse]

    def sample(self, prev: torch.Tensor, generator: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
        """Next ids (b,) drawn from ``softmax(log p(.|prev) / temperature)``; ``temperature == 0`` is argmax."""
        return _sample_rows(self.log_prob_rows(prev, torch.float64), generator, temperature)

# --------------------------------------------------------------------------- metrics
def row_stats(rows: torch.Tensor, targets: torch.Tensor, *, normalised: bool = True,
              row_of: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per target: its NLL (n,) float64, and whether it is in the top 1 and top 10 (n,) bool.

    rows: (r, vocab) log-probabilities, or with ``normalised=False`` logits (log-probabilities
    up to a constant per row, normalised here by their log-sum-exp, so no second (r, vocab)
    tensor is made); target i reads row ``row_of[i]`` (row i without ``row_of``, r = n), so
    targets that share a distribution share its row. A target is in the top k when fewer
    than k tokens of its row are strictly more likely (ties count as hits).
    """
    shapes = f"got {tuple(rows.shape)} and {tuple(targets.shape)}"
    if rows.ndim != 2 or targets.ndim != 1 or (row_of is None and rows.shape[0] != targets.shape[0]):
        raise ValueError(f"rows must be (n, vocab), targets (n,); {shapes}")
    if row_of is None:
        row_of = torch.arange(targets.shape[0], device=rows.device)
    row_of = row_of.to(rows.device, torch.long)
    if row_of.shape != targets.shape or (row_of.numel() and not 0 <= int(row_of.min()) <= int(row_of.max())
                                          < rows.shape[0]):
        raise ValueError(f"row_of must give each target a row of rows; {shapes}")
    targets = targets.to(rows.device, torch.long)
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= rows.shape[1]):
        raise ValueError(f"targets hold ids outside [0, {rows.shape[1]})")
    lp = rows[row_of, targets]  # (n,)
    k = min(10, rows.shape[1])
    kth = rows.topk(k, dim=1).values[row_of]  # (n, k), descending
    nll = -lp.to(torch.float64)
    if not normalised:
        nll = nll + torch.logsumexp(rows, dim=1).to(torch.float64)[row_of]
    return nll, lp >= kth[:, 0], lp >= kth[:, k - 1]
