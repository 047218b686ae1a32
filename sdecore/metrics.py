"""Numeric helpers shared by the losses, the evaluation and the analysis (docs/design.md §6.1):
the Gaussian negative log-likelihood, perplexity, NaN-aware means and float64 arrays."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

LOG_2PI = math.log(2 * math.pi)
_MAX_NLL = 700.0  # exp(700) is near float64's limit: a larger mean NLL reads as an infinite perplexity

ArrayLike = np.ndarray | torch.Tensor | Sequence[float] | float


def gaussian_nll(resid: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Elementwise negative log-likelihood (nats) of ``resid`` under ``N(0, var)``:
    ``0.5 * (log 2 pi + log var + resid^2 / var)``; ``var`` broadcasts against ``resid``."""
    return 0.5 * (LOG_2PI + torch.log(var) + resid.pow(2) / var)


def perplexity(mean_nll: float) -> float:
    """``exp(mean NLL)``, infinite past exp(700) instead of overflowing."""
    return math.exp(mean_nll) if mean_nll < _MAX_NLL else math.inf


def as_float64(a: ArrayLike) -> np.ndarray:
    """A float64 numpy array from a tensor (any device), array, list or scalar."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def finite_mean(a: ArrayLike) -> float:
    """Mean of the finite entries of ``a`` (NaN marks a path stopped after divergence); NaN if none."""
    a = as_float64(a)
    finite = np.isfinite(a)
    n = int(finite.sum())
    return float(np.where(finite, a, 0.0).sum() / n) if n else math.nan
