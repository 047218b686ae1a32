"""Training losses on the Euler-Maruyama transition density (docs/design.md §2.5):

    x_{k+1} | x_k, h_k ~ N(x_k + mu dt, diag(sigma^2) dt)

All functions are pure tensor maps; per-dimension losses are averaged over transitions
and dimensions, so they read on the same scale whatever the embedding width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .metrics import gaussian_nll


def drift_loss(x: torch.Tensor, x_next: torch.Tensor, mu: torch.Tensor, dt: float) -> torch.Tensor:
    """Mean squared error of the increment, ``|x_{k+1} - x_k - mu dt|^2`` per dimension.

    x, x_next, mu: (batch, dim). Returns a scalar.
    """
    return (x_next - x - mu * dt).pow(2).mean()


def diffusion_loss(x: torch.Tensor, x_next: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
                   dt: float) -> torch.Tensor:
    """Gaussian negative log-likelihood per dimension of the drift's residual under
    ``N(0, sigma^2 dt)``, with ``mu`` detached so this loss fits ``sigma`` alone.

    sigma may be (batch, dim) or (dim,). Returns a scalar (nats per dimension).
    """
    return gaussian_nll(x_next - x - mu.detach() * dt, sigma.pow(2) * dt).mean()


def emission_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (nats per token) of the next token under the emission's logits (batch, vocab)."""
    return F.cross_entropy(logits, targets)


def total_loss(parts: dict[str, torch.Tensor], *, drift_weight: float = 1.0, diffusion_weight: float = 1.0,
               ce_weight: float = 1.0) -> torch.Tensor:
    """Weighted sum of the drift, diffusion and emission cross-entropy losses."""
    return drift_weight * parts["drift"] + diffusion_weight * parts["diffusion"] + ce_weight * parts["ce"]
