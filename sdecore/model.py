"""Drift, diffusion and memory as one torchsde-compatible SDE (DESIGN.md section 2).

The state is ``y = [x, h]`` with ``x`` the standardised embedding of the current token
and ``h = [h_1, ..., h_K]`` exponential moving averages of ``x`` at fixed time scales:

    dx  = mu(x, h, t) dt + s * sigma(x, h, t) dW        (diagonal noise)
    dh_j = (x - h_j) / tau_j dt                         (no noise)

``mu`` and ``sigma`` are small MLPs; ``s`` is :attr:`TextSDE.diffusion_scale`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import losses
from .config import ModelConfig
from .embedding import Embedder
from .emission import GaussianEmission

_TIME_NORM = math.log1p(512)


def _mlp(n_in: int, hidden: int, n_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.SiLU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.SiLU(), nn.Dropout(dropout),
        nn.Linear(hidden, n_out),
    )


class TextSDE(nn.Module):
    """The text SDE: ``f``/``g`` follow torchsde's interface (``y`` of shape (batch, state_dim))."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, config: ModelConfig, embedder: Embedder, log_prior: torch.Tensor | None = None):
        super().__init__()
        if config.dim != embedder.dim:
            raise ValueError(f"model dim {config.dim} does not match embedder {embedder.name!r} dim {embedder.dim}")
        self.config = config.validate()
        support = embedder.support_mask
        raw = embedder.table
        # Standardise per dimension over the emittable vocabulary: derived from the
        # embedder (checked by fingerprint), so not stored in the checkpoint.
        mean, std = raw[support].mean(0), raw[support].std(0).clamp_min(1e-6)
        table = (raw - mean) / std
        self.register_buffer("emb_mean", mean, persistent=False)
        self.register_buffer("emb_std", std, persistent=False)
        radius = table[support].norm(dim=-1).quantile(0.99)
        self.register_buffer("cloud_radius", radius, persistent=False)
        rates = torch.tensor([config.dt / tau for tau in config.memory_timescales])
        self.register_buffer("memory_rates", rates, persistent=False)
        self.emission = GaussianEmission(table, support, log_prior, config.tau_init)

        n_in = config.dim + config.memory_dim + 1
        self.drift_net = _mlp(n_in, config.drift_hidden, config.dim, config.dropout)
        self.diffusion_net = _mlp(n_in, config.diffusion_hidden, config.dim, config.dropout)
        with torch.no_grad():
            self.drift_net[-1].weight.mul_(0.1)
            self.drift_net[-1].bias.zero_()
            # softplus(0.5413) = 1: start sigma near one standardised unit per sqrt(dt).
            self.diffusion_net[-1].weight.mul_(0.1)
            self.diffusion_net[-1].bias.fill_(0.5413)
        self.diffusion_scale = 1.0

    # ------------------------------------------------------------------ helpers
    @property
    def dim(self) -> int:
        return self.config.dim

    def standardise(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.emb_mean) / self.emb_std

    def token_states(self, ids: torch.Tensor) -> torch.Tensor:
        """Standardised embeddings of token ids: (...,) -> (..., dim)."""
        return self.emission.table[ids]

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return y[..., : self.dim], y[..., self.dim :]

    def _features(self, x: torch.Tensor, h: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        tf = torch.log1p(t.clamp_min(0) / self.config.dt) / _TIME_NORM
        tf = tf.expand(x.shape[0]).unsqueeze(-1) if tf.ndim == 0 else tf.reshape(-1, 1)
        return torch.cat([x, h, tf], dim=-1)

    def drift(self, x: torch.Tensor, h: torch.Tensor, t) -> torch.Tensor:
        """mu(x, h, t): (batch, dim)."""
        return self.drift_net(self._features(x, h, t))

    def sigma(self, x: torch.Tensor, h: torch.Tensor, t) -> torch.Tensor:
        """sigma(x, h, t) > 0: (batch, dim), before the diffusion scale."""
        return F.softplus(self.diffusion_net(self._features(x, h, t))) + self.config.sigma_min

    def memory_rate(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """dh/dt = (x - h_j) / tau_j for every time scale j: (batch, K * dim)."""
        hk = h.reshape(h.shape[0], -1, self.dim)
        return ((x.unsqueeze(1) - hk) * (self.memory_rates / self.config.dt)[None, :, None]).reshape(h.shape)

    # --------------------------------------------------------------- torchsde API
    def f(self, t, y: torch.Tensor) -> torch.Tensor:
        x, h = self.split(y)
        return torch.cat([self.drift(x, h, t), self.memory_rate(x, h)], dim=-1)

    def g(self, t, y: torch.Tensor) -> torch.Tensor:
        x, h = self.split(y)
        return torch.cat([self.diffusion_scale * self.sigma(x, h, t), torch.zeros_like(h)], dim=-1)

    # ---------------------------------------------------------- teacher forcing
    def teacher_forced_memory(self, xs: torch.Tensor) -> torch.Tensor:
        """Memory along token sequences read with teacher forcing.

        xs: (batch, length, dim) standardised embeddings. Returns h of shape
        (batch, length, K * dim), where h[:, k] summarises x[:, :k] by one Euler step of
        length dt per token, h_{k+1} = h_k + (dt / tau_j) (x_k - h_k), from h_0 = 0 (the
        vocabulary mean). This is the update an Euler-Maruyama step of the SDE makes.
        """
        b, length, d = xs.shape
        rates = self.memory_rates[None, :, None]
        h = xs.new_zeros(b, len(self.memory_rates), d)
        out = xs.new_empty(b, length, h.shape[1] * d)
        for k in range(length):
            out[:, k] = h.reshape(b, -1)
            h = h + rates * (xs[:, k].unsqueeze(1) - h)
        return out

    def prompt_state(self, ids: list[int]) -> torch.Tensor:
        """State y at the prompt's last token, reading the prompt through the memory: (1, state_dim)."""
        ids_t = torch.as_tensor(ids, dtype=torch.long, device=self.emb_mean.device)
        xs = self.token_states(ids_t).unsqueeze(0)
        hs = self.teacher_forced_memory(xs)
        return torch.cat([xs[:, -1], hs[:, -1]], dim=-1)

    # ------------------------------------------------------------------- losses
    def forward(self, x, h, t, x_next, v_next, ce_mask=None) -> dict[str, torch.Tensor]:
        """Per-batch losses on transitions ``(x, h, t) -> (x_next, v_next)``.

        x, x_next: (batch, dim); h: (batch, K * dim); t: (batch,); v_next: (batch,) token ids;
        ce_mask: (batch,) bool, the positions that enter the cross-entropy (all if None).
        Returns ``drift``, ``diffusion``, ``ce`` (nats per token) as scalars.
        """
        dt = self.config.dt
        mu, sig = self.drift(x, h, t), self.sigma(x, h, t)
        out = {
            "drift": losses.drift_loss(x, x_next, mu, dt),
            "diffusion": losses.diffusion_loss(x, x_next, mu, sig, dt),
        }
        if ce_mask is not None:
            x, mu, sig, v_next = x[ce_mask], mu[ce_mask], sig[ce_mask], v_next[ce_mask]
        logits = self.emission.next_token_logits(x + mu * dt, (sig.detach() ** 2) * dt)
        out["ce"] = losses.emission_ce(logits, v_next)
        return out


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
