"""Benchmarks of the engine, printed as one JSON object.

    python -m bench [--quick] [--scale] [--model DIR] [--device cpu|cuda|auto]

Comparisons are ratios measured in the same run: the engine's ``em`` loop against
torchsde's ``euler`` and ``srk`` on the same Brownian path, a ``BrownianInterval`` with
``dt`` set against one without, and (without ``--quick``) the map's regressor transform
against ``umap.UMAP.transform``. ``--quick`` finishes within three minutes on a 2-core CPU.
``--scale`` adds the training-at-scale rows of :mod:`bench.scale` (about four minutes more):
peak memory of ``sdecore train`` on 1x and 8x the corpus, and the on-the-fly training data
path's throughput against the precomputed table's.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdecore.process_setup import configure_threads  # noqa: E402

configure_threads()  # before torch is imported: docs/design.md §6.3

import torch  # noqa: E402
import torchsde  # noqa: E402

PROMPT = "How can I improve my sleep?"


def _time(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls (after one warm-up), seconds."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_solvers(ckpt, paths: int, tokens: int, repeat: int) -> dict:
    from sdecore import simulate_paths

    out = {"paths": paths, "tokens": tokens}
    for solver in ("em", "euler", "srk"):
        out[f"{solver}_s"] = _time(lambda s=solver: simulate_paths(ckpt.model, ckpt.embedder, PROMPT, paths=paths,
                                                                    tokens=tokens, solver=s, seed=0), repeat)
    out["euler_over_em"] = out["euler_s"] / out["em_s"]
    out["srk_over_euler"] = out["srk_s"] / out["euler_s"]
    out["tokens_per_s_em"] = paths * tokens / out["em_s"]
    return out


def bench_brownian(paths: int, dim: int, steps: int) -> dict:
    def query(dt):
        bm = torchsde.BrownianInterval(t0=0.0, t1=float(steps), size=(paths, dim), entropy=0, dt=dt,
                                       levy_area_approximation="space-time")
        for k in range(steps):
            bm(float(k), float(k + 1))

    with_dt, without = _time(lambda: query(1.0), 1), _time(lambda: query(None), 1)
    return {"steps": steps, "with_dt_s": with_dt, "without_dt_s": without, "without_over_with": without / with_dt}


def bench_training(ckpt, batch: int, repeat: int) -> dict:
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

    s = _time(step, repeat)
    model.eval()
    return {"batch": batch, "step_s": s, "transitions_per_s": batch / s}


def bench_load(model_dir) -> dict:
    from sdecore import load_checkpoint

    t0 = time.perf_counter()
    load_checkpoint(model_dir)
    return {"load_s": time.perf_counter() - t0}


def bench_map(ckpt, n: int) -> dict:
    """Regressor transform against umap.UMAP.transform on the same points (fits a UMAP first)."""
    import numpy as np
    import umap

    from sdecore.refmap import UMAPMap

    table = ckpt.model.emission.table[ckpt.model.emission.support_mask]
    idx = torch.randperm(table.shape[0], generator=torch.Generator().manual_seed(0))[: 2 * n]
    pts = table[idx].numpy().astype(np.float32)
    reducer = umap.UMAP(random_state=0).fit(pts[:n])
    m = UMAPMap(steps=500).fit(pts[:n])
    t_umap = _time(lambda: reducer.transform(pts[n:]), 1)
    t_reg = _time(lambda: m.transform(pts[n:]), 3)
    return {"points": n, "umap_transform_s": t_umap, "regressor_s": t_reg, "umap_over_regressor": t_umap / t_reg}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scale", action="store_true", help="add the training-at-scale rows (bench/scale.py)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    from sdecore import load_checkpoint
    from sdecore.runtime import resolve_device

    dev = resolve_device(a.device)
    t0 = time.perf_counter()
    result = {"device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.machine(), "quick": a.quick}
    result["load"] = bench_load(a.model)
    ckpt = load_checkpoint(a.model, device=dev)
    q = a.quick
    result["solvers"] = bench_solvers(ckpt, paths=16 if q else 64, tokens=16 if q else 64, repeat=1 if q else 3)
    result["brownian"] = bench_brownian(paths=16, dim=ckpt.model.config.state_dim, steps=32 if q else 128)
    result["training"] = bench_training(ckpt, batch=256 if q else 512, repeat=2 if q else 5)
    if not q:
        result["map"] = bench_map(ckpt, n=2000)
    if a.scale:
        from bench import scale

        corpus = scale.default_corpus()
        result["scale"] = {"memory": scale.bench_memory(corpus, device=str(dev)),
                           "throughput": scale.bench_throughput(corpus, device=str(dev))}
    result["total_s"] = time.perf_counter() - t0
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
