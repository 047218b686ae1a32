"""oneDNN's prepacked matrix products on the CPU (docs/design.md §3).

torch's CPU build carries oneDNN, and with it a product whose weight is reordered ("prepacked")
once into the layout its kernels read: at a few rows by a big matrix it runs several times
faster than torch's default CPU matmul, which repacks the matrix on every call (the decode's
(8 x 384) by (384 x 30,522) product: 2.1 ms against 8 ms on a 2-core CPU, and the drift net's
first layer likewise). It is reached through the operators torch's own compiler uses on CPUs
(``torch.ops.mkldnn._reorder_linear_weight`` and ``_linear_pointwise``), so every use here checks
itself once against the plain product and falls back to it where the operators are missing or
disagree; ``SDECORE_ONEDNN=0`` turns them off. Only for float32 on the CPU: the nets and the
decode use them for inference; the emission's logits also in training, both ways through an
autograd function (``sdecore.emission``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

BATCH_HINT = 256  # the batch the packed layout is tuned for; measured not to matter from 1 to 1,024
FEW_ROWS = 32  # below this many rows, and under passive waiting, small work runs on one thread
ACTIVATIONS = {"none": lambda y: y, "swish": F.silu}  # oneDNN's names; swish is SiLU


def usable(t: torch.Tensor) -> bool:
    """Whether a product with ``t`` may go through oneDNN: a float32 CPU tensor, no autocast,
    oneDNN present and not turned off."""
    return (t.device.type == "cpu" and t.dtype == torch.float32 and os.environ.get("SDECORE_ONEDNN") != "0"
            and not torch.is_autocast_enabled("cpu") and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def pack(weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str = "none") -> torch.Tensor | None:
    """``weight`` (out, in) prepacked for :func:`linear`, or None where oneDNN cannot be used or
    its product with this weight (and ``activation``) differs from the plain one on a check."""
    if not usable(weight):
        return None
    try:
        with torch.no_grad():
            w = weight.detach().contiguous()
            packed = torch.ops.mkldnn._reorder_linear_weight(w, BATCH_HINT)
            x = torch.randn(3, w.shape[1], generator=torch.Generator().manual_seed(0))
            b = None if bias is None else bias.detach()
            want = ACTIVATIONS[activation](F.linear(x, w, b))
            got = linear(x, packed, b, activation)
            scale = float(want.abs().max()) + 1.0
            if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * scale):
                return None
        return packed
    except (RuntimeError, AttributeError, TypeError, NotImplementedError):
        return None


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, activation: str = "none") -> torch.Tensor:
    """``activation(x @ weight.T + bias)`` with a weight from :func:`pack`: (batch, in) -> (batch, out)."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, activation, [], "")


@contextmanager
def serial_if_few(rows: int, device: torch.device) -> Iterator[None]:
    """One OpenMP thread for the work inside, when it is a few rows (under :data:`FEW_ROWS`) on a
    CPU whose OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``, docs/design.md §6.3).

    A passive thread is woken for each parallel operation, tens to a hundred microseconds on a
    2-core CPU, while the nets' products and the decode's passes over its logits take about as
    long at 8 rows on one thread: there one thread is 1.2-3 times faster (the 512 x 512 layer
    42 against 117 us, the decode's normalisation 160 against 530 us); at 16 rows the sampler
    runs 1.27 times faster so, and from 32 rows two threads are as fast. With spinning threads
    nothing changes. The count is the calling thread's own (OpenMP's setting is per thread), but
    torch also keeps it process-wide as the count a new thread starts with: a thread whose first
    torch work comes while another is inside this block starts on one thread, which is why the
    dashboard's worker sets its own count when it starts (``dashboard.serving``). The sampler's
    ``em`` and torchsde's ``euler`` give the same values to the bit either way (tested);
    ``milstein``'s derivative term can differ by float rounding."""
    n = torch.get_num_threads()
    if (rows >= FEW_ROWS or n == 1 or device.type != "cpu"
            or os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE"):
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
