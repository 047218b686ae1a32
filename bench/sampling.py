"""The sampler against the machine's own matrix-product rate (docs/design.md §3).

- ``gemm_gflops``: the rate of a plain ``torch.matmul`` of the decode's shape, (batch x dim)
  times (dim x vocabulary), measured in the same run for each batch size; ``gemm_gflops_onednn``
  the same product through oneDNN's prepacked kernel, which the CPU decode uses (faster than
  torch's default CPU matmul from two rows up, so the stricter yardstick).
- ``sampling``: for each batch of paths and method (the engine's ``em``, torchsde's ``euler``
  and ``milstein`` on the same Brownian path), path steps per second and the share of the
  matmul rate that the sampler's own matrix products reach: its FLOPs per path step are
  counted by ``torch.utils.flop_counter.FlopCounterMode`` on one short run (the decode's and
  the nets' products, 2 FLOPs a multiply-add), times the path steps per second, over
  ``gemm_gflops`` at that batch (``roofline_fraction``) and over the faster of the two
  (``roofline_fraction_best``).
- ``cost``: wall time of one run as the paths grow (1 to 4,096) and as the tokens grow (8 to 512).
- ``big_request``: ``sdecore sample --paths 4096 --tokens 16`` as a user runs it, its wall time
  and its peak resident memory (``os.wait4``'s ``ru_maxrss`` of that one process, started from a
  small helper process: see ``peak_rss_of``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "How can I improve my sleep?"
METHODS = {"em": "em", "torchsde-euler": "euler", "torchsde-milstein": "milstein"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, device: torch.device, repeat: int = 3, min_s: float = 0.2, warmup: bool = True) -> float:
    """Best wall time of ``fn`` over ``repeat`` rounds, after a warm-up call unless ``warmup`` is
    False; a round repeats ``fn`` until it has run ``min_s`` (so sub-millisecond calls are timed
    over many)."""
    if warmup:
        fn()
        _sync(device)
    best = float("inf")
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            _sync(device)
            elapsed = time.perf_counter() - t0
            if elapsed >= min_s:
                break
        best = min(best, elapsed / n)
    return best


def gemm_gflops(rows: int, dim: int, vocab: int, device: torch.device, repeat: int = 3) -> float:
    """GFLOP/s of ``torch.matmul`` of (rows x dim) by (dim x vocab), float32, on ``device``."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(rows, dim, generator=g).to(device)
    b = torch.randn(dim, vocab, generator=g).to(device)
    return 2 * rows * dim * vocab / best_time(lambda: torch.matmul(a, b), device, repeat) / 1e9


def gemm_gflops_onednn(rows: int, dim: int, vocab: int, device: torch.device, repeat: int = 3) -> float | None:
    """GFLOP/s of the same product through oneDNN's prepacked kernel (``sdecore.onednn``), the
    one the decode uses on a CPU from two rows up; None where it is not available."""
    from sdecore import onednn

    if device.type != "cpu":
        return None
    g = torch.Generator().manual_seed(0)
    a = torch.randn(rows, dim, generator=g)
    packed = onednn.pack(torch.randn(vocab, dim, generator=g))
    if packed is None:
        return None
    return 2 * rows * dim * vocab / best_time(lambda: onednn.linear(a, packed, None), device, repeat) / 1e9


def _simulate(ckpt, paths: int, tokens: int, solver: str, seed: int = 0):
    from sdecore import simulate_paths

    return simulate_paths(ckpt.model, ckpt.embedder, PROMPT, paths=paths, tokens=tokens, solver=solver,
                          diffusion_scale=1.0, seed=seed)


def _linear_pointwise_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """oneDNN's prepacked product (the decode's on a CPU): 2 FLOPs a multiply-add, as for mm."""
    rows = 1
    for n in x_shape[:-1]:
        rows *= n
    return 2 * rows * w_shape[0] * x_shape[-1]


def flop_counter() -> FlopCounterMode:
    """``FlopCounterMode`` that also counts the prepacked oneDNN product the CPU decode uses."""
    mapping = {}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        mapping[torch.ops.mkldnn._linear_pointwise] = _linear_pointwise_flop
    return FlopCounterMode(display=False, custom_mapping=mapping)


def flops_per_path_step(ckpt, solver: str) -> float:
    """Matrix-product FLOPs of one path step of ``solver`` (counted on 4 paths x 4 tokens,
    less the prompt's read-in, which a run does once)."""
    def count(tokens: int) -> int:
        with flop_counter() as fc:
            _simulate(ckpt, 4, tokens, solver)
        return fc.get_total_flops()

    _simulate(ckpt, 4, 1, solver)  # the weights' one-time packing (and its check) stays out of the count
    return (count(8) - count(4)) / (4 * 4)


def bench_sampling(ckpt, batches, steps: int, repeat: int, device: torch.device) -> dict:
    """``gemm_gflops`` (torch.matmul of the decode's shape) and ``gemm_gflops_onednn`` (the same
    product through oneDNN's prepacked kernel) per batch, and the ``sampling`` rows: for each
    method and batch, path steps per second, and the share of the matmul rate the sampler's own
    products reach, against ``gemm_gflops`` (``roofline_fraction``) and against the faster of
    the two (``roofline_fraction_best``)."""
    emission = ckpt.model.emission
    dim, vocab = emission.table.shape[1], emission.table.shape[0]
    gemm = {str(b): round(gemm_gflops(b, dim, vocab, device), 2) for b in batches}
    onednn = {str(b): gemm_gflops_onednn(b, dim, vocab, device) for b in batches}
    onednn = {b: None if v is None else round(v, 2) for b, v in onednn.items()}
    rows = []
    per_step = flops_per_path_step(ckpt, "em")
    for method, solver in METHODS.items():
        for i, b in enumerate(batches):
            # each round repeats a short run until it has taken 0.3 s: a one-path run of 8 tokens
            # (40 ms) timed once moves by 20% between rounds on a shared machine. A method's first
            # batch is warmed up (its first call's one-time work); a run of many paths is its own
            # warm-up, and a second one would cost seconds more than it tells; so would a last
            # round of torchsde's long runs, the reference rows.
            big = b * steps >= 4096
            rounds = repeat - 1 if big and method != "em" and repeat > 1 else repeat
            s = best_time(lambda b=b, solver=solver: _simulate(ckpt, b, steps, solver), device, rounds, min_s=0.3,
                          warmup=i == 0 or not big)
            rate = b * steps / s
            achieved = per_step * rate / 1e9
            best = max(gemm[str(b)], onednn[str(b)] or 0.0)
            rows.append({"batch": b, "steps": steps, "method": method, "path_steps_per_s": round(rate, 1),
                         "gflop_per_path_step": round(per_step / 1e9, 5),
                         "roofline_fraction": round(achieved / gemm[str(b)], 3),
                         "roofline_fraction_best": round(achieved / best, 3)})
    return {"gemm_gflops": gemm, "gemm_gflops_onednn": onednn, "sampling": rows}


def bench_cost(ckpt, device: torch.device, paths=(1, 4, 16, 64, 256, 1024, 4096), tokens=(8, 32, 128, 512),
               paths_at: int = 16, tokens_at: int = 16) -> dict:
    """Seconds of one ``em`` run (``simulate_paths``, best of two) as the paths grow at
    ``tokens_at`` tokens, and as the tokens grow at ``paths_at`` paths: the README's chart."""
    def run(p: int, t: int) -> dict:
        s = best_time(lambda: _simulate(ckpt, p, t, "em"), device, 2, min_s=0.0)
        return {"paths": p, "tokens": t, "seconds": round(s, 4), "path_steps_per_s": round(p * t / s, 1)}

    return {"by_paths": [run(p, tokens_at) for p in paths], "by_tokens": [run(paths_at, t) for t in tokens]}


# Runs the command in argv[2:] and writes its exit status and peak RSS (kB) to the file argv[1]. A
# child's ru_maxrss on Linux starts from its parent's resident size at fork (the high-water mark of
# the memory it had before exec), so the command is started from this small process, never from the
# benchmark itself, which holds gigabytes by then.
_SPAWN = """import json, os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=sys.stderr)
_, status, usage = os.wait4(proc.pid, 0)
json.dump({"status": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}, open(sys.argv[1], "w"))
"""


def peak_rss_of(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``cmd`` to its end: (seconds, its own peak resident memory in MB). Raises with the end
    of its stderr when it fails."""
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as err:
        report = Path(tmp) / "rss.json"
        t0 = time.perf_counter()
        rc = subprocess.run([sys.executable, "-c", _SPAWN, str(report), *cmd], cwd=cwd, stderr=err).returncode
        seconds = time.perf_counter() - t0
        result = json.loads(report.read_text()) if report.is_file() else {"status": rc, "maxrss_kb": 0}
        if rc != 0 or result["status"] != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-500:]
            raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({result['status']}): {tail}")
    return seconds, result["maxrss_kb"] / 1024


def bench_big_request(paths: int = 4096, tokens: int = 16, device: str = "cpu") -> dict:
    """``sdecore sample`` of ``paths`` x ``tokens`` in its own process: seconds and peak RSS."""
    cmd = [sys.executable, "-m", "sdecore", "sample", "--prompt", PROMPT, "--paths", str(paths), "--tokens",
           str(tokens), "--format", "json", "--device", device, "--no-progress"]
    seconds, peak = peak_rss_of(cmd, ROOT)
    return {"paths": paths, "tokens": tokens, "seconds": round(seconds, 2), "peak_rss_mb": round(peak, 1)}


def gpu_peak_mb(ckpt, paths: int = 4096, tokens: int = 16) -> dict:
    """The same request in this process on the checkpoint's GPU: seconds and the GPU memory it
    allocated at its peak beyond what the model holds (``torch.cuda.max_memory_allocated``)."""
    dev = ckpt.model.emb_mean.device
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    t0 = time.perf_counter()
    _simulate(ckpt, paths, tokens, "em")
    torch.cuda.synchronize(dev)
    return {"gpu_seconds": round(time.perf_counter() - t0, 3),
            "gpu_peak_mb": round((torch.cuda.max_memory_allocated(dev) - base) / 2**20, 1)}
