"""Benchmarks of the engine, printed as one JSON object.

    python -m bench [--quick] [--scale] [--model DIR] [--device cpu|cuda|auto] [--out FILE]

Comparisons are ratios measured in the same run: the sampler's and the training step's matrix
products against a plain matmul of the decode's shape (``gemm_gflops``; :mod:`bench.sampling`),
the engine's ``em`` loop against torchsde's ``euler`` and ``milstein`` on the same Brownian path,
a ``BrownianInterval`` with ``dt`` set against one without, and the map's regressor transform
against ``umap.UMAP.transform`` (time and trustworthiness). ``big_request`` is a 4,096-path request
through the command line, with its peak memory; ``cost`` (not with ``--quick``) times one run as
the paths and the tokens grow. ``--quick`` finishes within three minutes on a 2-core CPU.
``--scale`` adds the training-at-scale rows of :mod:`bench.scale` (about four minutes more):
peak memory of ``sdecore train`` on 1x and 8x the corpus, and the on-the-fly training data
path's throughput against the precomputed table's.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdecore.process_setup import configure_threads  # noqa: E402

configure_threads()  # before torch is imported: docs/design.md §6.3

import torch  # noqa: E402
import torchsde  # noqa: E402

from bench import emit  # noqa: E402


def _time(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls (after one warm-up), seconds."""
    from bench.sampling import best_time

    return best_time(fn, torch.device("cuda" if torch.cuda.is_available() else "cpu"), repeat, min_s=0.0)


def bench_brownian(paths: int, dim: int, steps: int) -> dict:
    def query(dt):
        bm = torchsde.BrownianInterval(t0=0.0, t1=float(steps), size=(paths, dim), entropy=0, dt=dt,
                                       levy_area_approximation="space-time")
        for k in range(steps):
            bm(float(k), float(k + 1))

    with_dt, without = _time(lambda: query(1.0), 1), _time(lambda: query(None), 1)
    return {"steps": steps, "with_dt_s": with_dt, "without_dt_s": without, "without_over_with": without / with_dt}


def bench_training(ckpt, batch: int, repeat: int, device: torch.device) -> dict:
    """One optimisation step's forward and backward at ``batch`` transitions (cross-entropy on
    every row), its rate and its matrix products' share of the matmul rate at the decode's
    shape with ``batch`` rows (FLOPs counted by ``FlopCounterMode``, oneDNN's products included):
    torch.matmul's rate, and the faster of it and oneDNN's prepacked kernel."""
    from bench.sampling import best_time, flop_counter, gemm_gflops, gemm_gflops_onednn
    from sdecore.config import TrainConfig
    from sdecore.train import weighted_loss

    model, dim = ckpt.model.train(), ckpt.model.dim
    dev = model.emb_mean.device
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, dim, generator=g).to(dev)
    h = torch.randn(batch, model.config.memory_dim, generator=g).to(dev)
    t = torch.rand(batch, generator=g).to(dev)
    v = torch.randint(1000, 20000, (batch,), generator=g).to(dev)
    cfg = TrainConfig()

    def step():
        model.zero_grad()
        weighted_loss(model(x, h, t, x, v), cfg).backward()

    step()  # the emission's one-time packing of its matrices stays out of the count
    with flop_counter() as fc:
        step()
    s = best_time(step, device, repeat, min_s=0.0)
    model.eval()
    vocab = model.emission.table.shape[0]
    achieved = fc.get_total_flops() / s / 1e9
    gemm = gemm_gflops(batch, dim, vocab, device)
    best = max(gemm, gemm_gflops_onednn(batch, dim, vocab, device) or 0.0)
    return {"batch": batch, "step_s": round(s, 4), "transitions_per_s": round(batch / s, 1),
            "gflop_per_step": round(fc.get_total_flops() / 1e9, 2), "roofline_fraction": round(achieved / gemm, 3),
            "roofline_fraction_best": round(achieved / best, 3)}


def bench_load(model_dir) -> dict:
    from sdecore import load_checkpoint

    t0 = time.perf_counter()
    load_checkpoint(model_dir)
    return {"load_s": time.perf_counter() - t0}


def bench_projection(ckpt, n: int) -> dict:
    """The map's fast transform (a regressor fitted to UMAP's coordinates) against
    ``umap.UMAP.transform`` on the same held-out points: time and trustworthiness
    (``sklearn.manifold.trustworthiness``, k = 10) of each. Fits a UMAP on ``n`` token embeddings
    first; the held-out points are ``n`` others."""
    import numpy as np
    import umap
    from sklearn.manifold import trustworthiness

    from sdecore.refmap import UMAPMap

    table = ckpt.model.emission.table[ckpt.model.emission.support_mask].cpu()
    idx = torch.randperm(table.shape[0], generator=torch.Generator().manual_seed(0))[: 2 * n]
    pts = table[idx].numpy().astype(np.float32)
    fit, held = pts[:n], pts[n:]
    reducer = umap.UMAP(random_state=0).fit(fit)
    fast = UMAPMap(steps=500).fit(fit, reducer=reducer)  # the same UMAP (its defaults), not fitted twice
    by_umap = reducer.transform(held)  # numba compiles on this first call: the timing below is warm
    t0 = time.perf_counter()
    reducer.transform(held)
    t_umap = time.perf_counter() - t0
    t_fast = _time(lambda: fast.transform(held), 3)
    return {"points": n, "umap_transform_ms": round(t_umap * 1000, 1), "fast_transform_ms": round(t_fast * 1000, 2),
            "speedup": round(t_umap / t_fast, 1),
            "trustworthiness_umap": round(float(trustworthiness(held, by_umap, n_neighbors=10)), 4),
            "trustworthiness_fast": round(float(trustworthiness(held, fast.transform(held), n_neighbors=10)), 4)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scale", action="store_true", help="add the training-at-scale rows (bench/scale.py)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    a = ap.parse_args(argv)
    from sdecore import load_checkpoint
    from sdecore.runtime import resolve_device

    dev = resolve_device(a.device)
    t0 = time.perf_counter()
    result = {"device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.machine(), "quick": a.quick}
    if dev.type == "cpu":  # whether the one-thread rule holds here (sdecore.onednn.serial_if_few)
        from sdecore import onednn

        result["few_rows_one_thread"] = bool(
            os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE" and torch.get_num_threads() > 1
            and onednn.serial_pays())
    result["load"] = bench_load(a.model)
    ckpt = load_checkpoint(a.model, device=dev)
    q = a.quick
    from bench import sampling

    batches = [1, 16, 128, 1024] + ([] if q else [4096])
    result.update(sampling.bench_sampling(ckpt, batches, steps=8 if q else 16, repeat=2 if q else 3, device=dev))
    result["big_request"] = sampling.bench_big_request(device=str(dev))
    if dev.type == "cuda":
        result["big_request"].update(sampling.gpu_peak_mb(ckpt))
    if not q:
        result["cost"] = sampling.bench_cost(ckpt, dev)
    result["brownian"] = bench_brownian(paths=16, dim=ckpt.model.config.state_dim, steps=32 if q else 128)
    result["training"] = bench_training(ckpt, batch=256 if q else 512, repeat=2 if q else 5, device=dev)
    try:
        result["projection"] = bench_projection(ckpt, n=1000 if q else 2000)
    except ImportError as exc:  # the umap extra
        result["projection"] = {"skipped": f"needs umap-learn and scikit-learn ({exc})"}
    if a.model is None and dev.type == "cpu":  # the dashboard serves the shipped model, on the CPU here
        try:
            from bench.dashboard import bench_dashboard

            result["dashboard"] = bench_dashboard()
        except ImportError as exc:  # the dashboard extra, Playwright
            result["dashboard"] = {"skipped": f"needs streamlit and playwright with /usr/bin/chromium ({exc})"}
    if a.scale:
        from bench import scale

        corpus = scale.default_corpus()
        result["scale"] = {"memory": scale.bench_memory(corpus, device=str(dev)),
                           "throughput": scale.bench_throughput(corpus, device=str(dev))}
    result["total_s"] = time.perf_counter() - t0
    emit(result, a.out)


if __name__ == "__main__":
    main()
