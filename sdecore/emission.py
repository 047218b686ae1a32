"""The Gaussian emission that reads tokens off the latent SDE state (docs/design.md §2.4).

    p(v | x) ∝ pi_v^w  N(x ; E_v, diag(tau^2))

with ``pi`` a smoothed unigram prior, ``w`` a learned weight and ``tau`` a learned
per-dimension spread. Integrating over one Euler-Maruyama step from ``x_k`` gives the
next-token distribution in closed form:

    p(v | prefix) ∝ pi_v^w  N(E_v ; x_k + mu dt, diag(sigma^2 dt + tau^2))

Only ids in the embedder's support (no special or unused tokens) can be emitted.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import onednn

# Rows decoded at a time: on a CPU a (256, 30,522) float32 block of logits (31 MB) stays in the
# last-level cache while its passes run, and the product is as fast per row as at 1,024 rows;
# a GPU takes bigger blocks (1,024: 125 MB).
DECODE_BLOCK = {"cpu": 256, "other": 1024}
ARGMAX_CHUNK = 512  # row_max_argmax's chunk width
ARGMAX_MIN_ROWS = 16  # below this many rows the chunked maximum saves nothing over max


def row_blocks(n: int, block: int) -> list[slice]:
    """Slices of ``n`` rows, ``block`` at a time, no slice of a single row unless ``n`` is 1: the
    last block borrows a row from the one before. A one-row product runs through the plain kernel,
    whose rounding differs from the packed one's; every block of two rows or more gets the packed
    product's values, whatever its size, so a row decodes the same in any batch (docs/design.md §3)."""
    bounds = list(range(0, n, block)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        bounds[-2] -= 1
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def row_max_argmax(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits.max(-1)`` of a (batch, n) tensor, the maximum of each row and the first index
    holding it, in two cheap passes: the maxima of ``ARGMAX_CHUNK``-wide chunks (a plain
    maximum, several times faster on a CPU than a reduction that also tracks its index), then the
    argmax inside each row's first chunk that holds its maximum. The same values and indices as
    ``max``, ties included. Fewer than ``ARGMAX_MIN_ROWS`` rows go through ``max`` itself."""
    b, n = logits.shape
    c = ARGMAX_CHUNK
    full = n // c * c
    if full == 0 or b < ARGMAX_MIN_ROWS:
        return logits.max(-1)
    chunk_max = logits[:, :full].unflatten(-1, (-1, c)).amax(-1)
    if full < n:
        chunk_max = torch.cat([chunk_max, logits[:, full:].amax(-1, keepdim=True)], dim=-1)
    top, first = chunk_max.max(-1)
    start = first * c
    # the last chunk may be short: its clamped indices repeat the row's last column after it, so
    # the first maximum is still found first
    cols = (start[:, None] + torch.arange(c, device=logits.device)).clamp_max_(n - 1)
    return top, start + logits.gather(1, cols).argmax(-1)


class _PackedProduct(torch.autograd.Function):
    """``bias + a @ M.T`` through oneDNN's prepacked product, with its gradient: ``forward`` packs
    ``M`` (out, in), ``backward`` its transpose, so both directions avoid torch's per-call repacking."""

    @staticmethod
    def forward(ctx, a, bias, forward_pack, backward_pack):
        ctx.backward_pack = backward_pack
        ctx.bias_grad = bias is not None and bias.requires_grad
        return onednn.linear(a, forward_pack, bias)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        grad_a = onednn.linear(grad, ctx.backward_pack, None) if ctx.needs_input_grad[0] else None
        return grad_a, grad.sum(0) if ctx.bias_grad else None, None, None


class GaussianEmission(nn.Module):
    """Emission over a standardised embedding table ``(vocab, dim)``."""

    def __init__(self, table: torch.Tensor, support_mask: torch.Tensor, log_prior: torch.Tensor | None = None,
                 tau_init: float = 1.0):
        super().__init__()
        vocab, dim = table.shape
        self.register_buffer("table", table, persistent=False)
        # the table transposed and contiguous, (dim, vocab): the layout the products with a few
        # rows run fastest on (2.3x at one row on a CPU than through the transposed view)
        self.register_buffer("table_t", table.T.contiguous(), persistent=False)
        self.register_buffer("table_sq", table * table, persistent=False)
        self.register_buffer("support_mask", support_mask.clone(), persistent=False)
        if log_prior is None:
            log_prior = torch.zeros(vocab)
        self.register_buffer("log_prior", log_prior.to(torch.float32).clone())
        self.log_tau = nn.Parameter(torch.full((dim,), math.log(tau_init)))
        self.prior_weight = nn.Parameter(torch.tensor(1.0))
        self._state_cache: tuple | None = None  # (parameter versions, 1 / tau^2, bias): state_logits
        self._packs: dict[str, tuple] = {}  # name -> (table's storage, oneDNN-packed matrix or None): _product

    @property
    def tau2(self) -> torch.Tensor:
        return torch.exp(2 * self.log_tau)

    def logits(self, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """Unnormalised log p(v) for a Gaussian ``N(E_v; mean, diag(var))`` times the prior.

        mean: (batch, dim); var: (batch, dim) or (dim,). Returns (batch, vocab).
        The quadratic is expanded, ``|E_v - m|^2_var = E_v^2 . 1/var - 2 E_v . m/var + const``,
        so the cost is matrix products instead of a (batch, vocab, dim) tensor; the constant
        (and the Gaussian's normaliser, equal for every v) cancels in the softmax. Everything
        that does not depend on the row (the prior, the support mask, and the quadratic when
        ``var`` is shared) is one bias of shape (vocab,), added inside the product (``addmm``),
        so a (batch, vocab) tensor is written once; with a per-row ``var`` also once where the
        packed kernel runs (one product of twice the depth), else twice. Always
        float32, also under autocast: the terms are tens of nats each and cancel to the logits,
        beyond bfloat16's eight-bit mantissa.
        """
        with torch.autocast(mean.device.type, enabled=False):
            return self._logits(mean.float(), var.float())

    def _logits(self, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        inv = 1.0 / var
        if inv.ndim == 1:
            return self._product(mean * inv, self._bias(inv), "table")
        # a variance per row: both terms in one product of twice the depth where the packed
        # kernel runs (both ways when there are gradients), [m/var, -1/(2 var)] by [E, E^2]: one
        # (batch, vocab) write, and one read of its gradient backwards (the forward 1.4 times
        # faster here than two products and a sum at 256 rows)
        packed = self._packed("table_both", mean) is not None
        if packed and (not torch.is_grad_enabled() or self._packed("table_both_t", mean) is not None):
            return self._product(torch.cat([mean * inv, -0.5 * inv], dim=-1), self._bias(), "table_both")
        return torch.addmm(self._bias(), mean * inv, self.table_t).addmm_(inv, self.table_sq.T, alpha=-0.5)

    def _bias(self, shared_inv: torch.Tensor | None = None) -> torch.Tensor:
        """What the logits add whatever the row: the weighted prior, -inf outside the support and,
        for a variance shared by every row (its inverse ``shared_inv``), the quadratic term."""
        bias = torch.where(self.support_mask, self.prior_weight * self.log_prior, float("-inf"))
        return bias if shared_inv is None else bias - 0.5 * (self.table_sq @ shared_inv)

    def next_token_logits(self, mean: torch.Tensor, sigma2dt: torch.Tensor) -> torch.Tensor:
        """Closed-form next-token logits after one SDE step: var = sigma^2 dt + tau^2."""
        return self.logits(mean, sigma2dt + self.tau2)

    def state_logits(self, x: torch.Tensor, banned: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the token emitted at state ``x`` (batch, dim): var = tau^2, -inf at the
        ``banned`` ids (vocab,) bool if given (put into the bias: no pass over the logits). Without
        gradients (decoding), the bias (the prior, the mask and the quadratic term, which
        depend on tau and w alone) is computed once and kept until a parameter changes, so a
        decode step costs one (batch x dim) by (dim x vocab) product, not two. The key is each
        parameter's version counter and storage: in-place updates (optimiser steps,
        ``load_state_dict``) and moves invalidate it; writes through ``.data`` and fused
        optimisers, which bypass the counter, would not (nothing here uses them)."""
        if torch.is_grad_enabled() or x.dtype != torch.float32 or torch.is_autocast_enabled(x.device.type):
            logits = self.logits(x, self.tau2)
            return logits if banned is None else logits.masked_fill(banned, float("-inf"))
        params = (self.log_tau, self.prior_weight, self.log_prior)
        key = tuple((p._version, p.data_ptr()) for p in params)
        if self._state_cache is None or self._state_cache[0] != key:
            inv = 1.0 / self.tau2
            self._state_cache = (key, inv, self._bias(inv))
        _, inv, bias = self._state_cache
        if banned is not None:
            bias = bias.masked_fill(banned, float("-inf"))
        return self._product(x * inv, bias, "table")

    def _matrix(self, name: str) -> torch.Tensor:
        """The (vocab, k) matrix ``name``: the table (``"table"``), or the table beside its square,
        (vocab, 2 dim) (``"table_both"``); with ``_t``, its transpose, contiguous (the table's is the
        ``table_t`` buffer)."""
        if name.startswith("table_both"):  # built in its final layout: one copy, not two
            t = name.endswith("_t")
            return torch.cat([self.table.T, self.table_sq.T] if t else [self.table, self.table_sq], dim=0 if t else -1)
        return self.table_t if name.endswith("_t") else self.table

    def _packed(self, name: str, a: torch.Tensor) -> torch.Tensor | None:
        """The oneDNN-packed form of the matrix ``name`` (:meth:`_matrix`), packed on first use and
        kept until the table changes; None where oneDNN is not used for ``a``
        (:mod:`sdecore.onednn`: not a float32 CPU tensor, one row, where the plain product is as
        fast, or oneDNN unavailable)."""
        if a.shape[0] == 1 or not onednn.usable(a):
            return None
        key = (self.table.data_ptr(), self.table.device)
        entry = self._packs.get(name)
        if entry is None or entry[0] != key:
            entry = self._packs[name] = (key, onednn.pack(self._matrix(name)))
        return entry[1]

    def _product(self, a: torch.Tensor, bias: torch.Tensor | None, name: str) -> torch.Tensor:
        """``bias + a @ M.T`` (batch, vocab) for ``M`` the matrix ``name`` (:meth:`_matrix`): through
        oneDNN's prepacked product on a CPU, each pack an extra copy of the matrix (forward and,
        with gradients, backward: 1.2-1.3 times faster for a training step, several times for a few
        rows), else ``addmm`` on the transposed matrix."""
        fwd = self._packed(name, a)
        if fwd is not None and torch.is_grad_enabled() and (
                a.requires_grad or (bias is not None and bias.requires_grad)):
            bwd = self._packed(name + "_t", a)
            if bwd is not None:
                return _PackedProduct.apply(a, bias, fwd, bwd)
            fwd = None  # the transpose's pack declined: torch's own product, with its gradient
        if fwd is None:
            m = self._matrix(name + "_t")
            return a @ m if bias is None else torch.addmm(bias, a, m)
        return onednn.linear(a, fwd, bias)

    @torch.no_grad()
    def decode(
        self, x: torch.Tensor, temperature: float = 0.0, generator: torch.Generator | None = None,
        exclude: torch.Tensor | None = None, block: int | None = None, banned: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids emitted at states ``x`` (batch, dim) and their probabilities.

        ``temperature == 0`` takes the most likely token (deterministic given a path);
        otherwise a token is sampled from ``softmax(logits / temperature)``. ``exclude``
        (batch,) names one id per row that may not be emitted (the token a path is on), ``banned``
        (vocab,) bool the ids no row may emit (a continuation's first token cannot continue a
        word, docs/design.md §3). Returns ids (batch,) and p(id | x) under the untempered emission (batch,). Rows are
        decoded ``block`` at a time (``DECODE_BLOCK`` for the device by default), so a large
        batch never holds more than one block's (block, vocab) logits, and the probability is
        normalised in place: at temperature 0 a block costs its matrix product, the maximum and
        the argmax (:func:`row_max_argmax`), and the passes of the exponential's sum.
        """
        if block is None:
            block = DECODE_BLOCK["cpu" if x.device.type == "cpu" else "other"]
        ids, probs = [], []
        for rows in row_blocks(x.shape[0], block):
            logits = self.state_logits(x[rows], banned)
            with onednn.serial_if_few(logits.shape[0], logits.device):  # the passes over the logits
                v, p = self._pick(logits, temperature, generator, None if exclude is None else exclude[rows])
            ids.append(v)
            probs.append(p)
        if not ids:
            return x.new_zeros(0, dtype=torch.long), x.new_zeros(0)
        return torch.cat(ids), torch.cat(probs)

    @staticmethod
    def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None,
              exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One block's ids and probabilities from its logits (overwritten: normalised in place)."""
        if exclude is not None:
            logits.scatter_(-1, exclude[:, None], float("-inf"))
        top, v = row_max_argmax(logits)
        if temperature > 0:
            # max-shifted, so a tiny temperature cannot overflow every logit to -inf
            weights = torch.softmax((logits - top[:, None]) / temperature, dim=-1)
            v = torch.multinomial(weights, 1, generator=generator).squeeze(-1)
            chosen = logits.gather(-1, v[:, None]).squeeze(-1)
        else:
            chosen = top
        # p(v) = exp(logit_v - top) / sum exp(logits - top), the sum taken in place
        total = logits.sub_(top[:, None]).exp_().sum(dim=-1)
        return v, (chosen - top).exp() / total

    @torch.no_grad()
    def nearest_tokens(self, points: torch.Tensor, block: int | None = None) -> torch.Tensor:
        """The emittable token nearest (Euclidean, standardised space) to each of ``points``
        (n, dim): ids (n,), -1 for a row that is not finite (a stopped path). The nearest
        maximises ``p.E_v - |E_v|^2 / 2``: one product with the table, as in decoding."""
        points = torch.as_tensor(points, dtype=torch.float32, device=self.table.device)
        if block is None:
            block = DECODE_BLOCK["cpu" if points.device.type == "cpu" else "other"]
        ok = torch.isfinite(points).all(-1)
        p = torch.nan_to_num(points, nan=0.0, posinf=0.0, neginf=0.0)
        half_sq = torch.where(self.support_mask, -0.5 * self.table_sq.sum(-1), float("-inf"))
        ids = [row_max_argmax(self._product(p[rows], half_sq, "table"))[1] for rows in row_blocks(len(p), block)]
        ids = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long, device=p.device)
        return torch.where(ok, ids, torch.full_like(ids, -1))

    def frequent_tokens(self, n: int) -> torch.Tensor:
        """The ``n`` emittable ids the unigram prior ranks highest (the training corpus's most
        frequent tokens): a LongTensor (n,) on the CPU."""
        prior = self.log_prior.detach().cpu().masked_fill(~self.support_mask.cpu(), float("-inf"))
        return torch.argsort(prior, descending=True)[:n]
