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
import threading
import time
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


_serial_pays: dict[int, bool] = {}  # thread count -> whether one thread won the probe
_probe_lock = threading.Lock()


def serial_pays() -> bool:
    """Whether one OpenMP thread beats all of torch's threads at a few rows on this machine:
    measured once per process and thread count by :func:`probe_few_rows`, unless
    ``SDECORE_FEW_ROWS_SERIAL`` is ``1`` (always one thread) or ``0`` (never)."""
    forced = os.environ.get("SDECORE_FEW_ROWS_SERIAL")
    if forced in ("0", "1"):
        return forced == "1"
    n = torch.get_num_threads()
    if n not in _serial_pays:
        with _probe_lock:
            if n not in _serial_pays:
                one, every = probe_few_rows()
                _serial_pays[n] = one < every
    return _serial_pays[n]


def probe_few_rows(rounds: int = 9) -> tuple[float, float]:
    """Seconds (the fastest of ``rounds``, the two settings alternating) of a step's worth of
    few-row work on one thread and on torch's current thread count: two packed layers of the drift
    net's shape (2,689 -> 512 -> 512, SiLU) and a decode's normalisation pass, at 8 rows. About 30
    ms on a 2-core CPU. Which setting wins depends on the CPU (design §6.3): how long a passively
    waiting thread takes to wake against how long the work takes on one. The fastest round, not a
    typical one, is compared: the process keeps the answer, and the probe may run while the
    machine is busy for a moment (a dashboard's first run beside a browser loading the page), which
    slows the rounds of both settings but the fastest of each the least."""
    g = torch.Generator().manual_seed(0)
    x, logits = torch.randn(8, 2689, generator=g), torch.randn(8, 30522, generator=g)
    w1, w2 = torch.randn(512, 2689, generator=g) * 0.02, torch.randn(512, 512, generator=g) * 0.04
    p1, p2 = pack(w1, None, "swish"), pack(w2, None, "swish")

    def work() -> None:
        if p1 is not None and p2 is not None:
            linear(linear(x, p1, None, "swish"), p2, None, "swish")
        else:
            F.silu(F.linear(F.silu(F.linear(x, w1)), w2))
        logits.clone().exp_().sum(-1)

    n = torch.get_num_threads()
    times: dict[int, list[float]] = {1: [], n: []}
    try:
        with torch.no_grad():
            work()
            for _ in range(rounds):
                for k in (1, n):
                    torch.set_num_threads(k)
                    t0 = time.perf_counter()
                    work()
                    times[k].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(n)
    return min(times[1]), min(times[n])


@contextmanager
def serial_if_few(rows: int, device: torch.device) -> Iterator[None]:
    """One OpenMP thread for the work inside, when it is a few rows (under :data:`FEW_ROWS`) on a
    CPU whose OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``, docs/design.md §6.3) and
    where one thread wins :func:`probe_few_rows` (:func:`serial_pays`).

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
    ``milstein``'s derivative term can differ by float rounding. On a 2-core AMD EPYC (Zen 2) the
    probe finds two threads faster (as do whole runs of 4, 8 and 16 paths), and the rule stays off
    there. Since ``milstein`` can round differently on one thread, its values can differ between
    machines whose probes answer differently."""
    n = torch.get_num_threads()
    if (rows >= FEW_ROWS or n == 1 or device.type != "cpu"
            or os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE" or not serial_pays()):
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
