"""Training at scale: peak memory of ``sdecore train`` as the corpus grows, and the training
data path's throughput against the precomputed-table path it replaced (docs/design.md §2.5).

- ``memory``: peak resident memory (the kernel's high-water mark, ``VmHWM``) of a real
  ``python -m sdecore train`` process during its first ``seconds`` on a corpus of 1x and 8x the
  rows. The 8x corpus is made of copies of the rows, each copy's prompts given their own suffix,
  so the split by prompt still works and the copies land on both sides.
- ``throughput``: transitions per second of training steps at one batch size, the batches
  built on the fly from token ids (``sdecore.tokendata``) against the same steps on batches
  taken from a table of precomputed transitions (``sdecore.transitions.build_transitions``), in
  the same process, alternating, so the ratio is what the machine's load cannot skew.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def vm_hwm_mb(pid: int) -> float | None:
    """A live process's peak resident memory in MB (``VmHWM`` of /proc), None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def write_copies(src: Path, dst: Path, copies: int) -> int:
    """``copies`` copies of the rows of ``src`` (JSON lines) into ``dst``, copy c's prompts
    suffixed with " (variant c)" (copy 0 unchanged). Returns the row count written."""
    rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    n = 0
    with open(dst, "w", encoding="utf-8") as fh:
        for c in range(copies):
            for r in rows:
                r = dict(r)
                if c:
                    r["prompt"] = f"{r['prompt']} (variant {c})"
                fh.write(json.dumps(r) + "\n")
                n += 1
    return n


def train_peak_rss(corpus: Path, seconds: float, work: Path, device: str = "cpu") -> dict:
    """Run ``sdecore train`` on ``corpus`` for ``seconds`` (or until it ends) and read its peak RSS."""
    out = work / f"out-{corpus.stem}"
    cmd = [sys.executable, "-m", "sdecore", "train", "--corpus", str(corpus), "--out", str(out), "--epochs", "50",
           "--no-report", "--no-progress", "--overwrite", "--device", device]
    t0 = time.perf_counter()
    err = work / f"stderr-{corpus.stem}.txt"
    with open(err, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=fh, text=True)
    peak = None
    try:
        while proc.poll() is None and time.perf_counter() - t0 < seconds:
            peak = vm_hwm_mb(proc.pid) or peak
            time.sleep(0.25)
        peak = vm_hwm_mb(proc.pid) or peak
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if proc.returncode not in (0, -9):
        raise RuntimeError(f"sdecore train failed: {err.read_text()[-500:]}")
    return {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak or 0.0, 1)}


def bench_memory(src: Path, seconds: float = 90.0, copies=(1, 8), device: str = "cpu") -> dict:
    with tempfile.TemporaryDirectory(prefix="sdecore_scale_") as tmp:
        work = Path(tmp)
        rows = {}
        for c in copies:
            corpus = work / f"x{c}.jsonl"
            n = write_copies(src, corpus, c)
            rows[f"x{c}"] = {"rows": n, **train_peak_rss(corpus, seconds, work, device)}
    lo, hi = rows[f"x{copies[0]}"]["peak_rss_mb"], rows[f"x{copies[-1]}"]["peak_rss_mb"]
    return {"corpus": str(src), "window_s": seconds, **rows, "ratio": round(hi / lo, 3) if lo else None}


def bench_throughput(src: Path, batch: int = 512, steps: int = 12, max_rows: int = 60, device: str = "cpu") -> dict:
    """Training steps per second on on-the-fly batches against precomputed ones, alternating."""
    from sdecore import Embedder, ModelConfig, TextSDE, TrainConfig
    from sdecore.data import load_corpus, split_by_prompt
    from sdecore.tokendata import TokenSequences, batches, window_batch
    from sdecore.train import weighted_loss
    from sdecore.transitions import build_transitions, encode_rows

    cfg = TrainConfig(batch_size=batch)
    emb = Embedder.default()
    train_df = split_by_prompt(load_corpus(src, max_rows), cfg.val_fraction).train
    seqs, firsts = encode_rows(emb, train_df, training=True, include_prompts=True)
    torch.manual_seed(0)
    model = TextSDE(ModelConfig(), emb).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    table = build_transitions(model, seqs, firsts)
    tokens = TokenSequences.from_lists(seqs, firsts)
    gen = torch.Generator().manual_seed(0)
    # cycled, so a corpus of fewer batches than steps (the tests' tiny one) still runs
    groups = itertools.cycle(list(batches(tokens.windows(cfg.window), max(1, batch // cfg.window), generator=gen)))
    rows = itertools.cycle(torch.randperm(len(table), generator=gen).split(batch))

    def step(batch_tuple):
        opt.zero_grad(set_to_none=True)
        weighted_loss(model(*batch_tuple), cfg).backward()
        opt.step()

    def on_the_fly() -> int:
        with torch.no_grad():
            b = window_batch(model, tokens, next(groups))
        step(b.as_tuple())
        return len(b)

    def precomputed() -> int:
        idx = next(rows)
        step(table.take(idx, device))
        return len(idx)

    timing = {"on_the_fly": [0.0, 0], "precomputed": [0.0, 0]}
    on_the_fly(), precomputed()  # warm-up
    for _ in range(steps):
        for name, fn in (("on_the_fly", on_the_fly), ("precomputed", precomputed)):
            t0 = time.perf_counter()
            n = fn()
            if device != "cpu":
                torch.cuda.synchronize()
            timing[name][0] += time.perf_counter() - t0
            timing[name][1] += n
    rate = {k: n / s for k, (s, n) in timing.items()}
    return {"batch": batch, "window": cfg.window, "steps": steps,
            "on_the_fly_transitions_per_s": round(rate["on_the_fly"], 1),
            "precomputed_transitions_per_s": round(rate["precomputed"], 1),
            "ratio": round(rate["on_the_fly"] / rate["precomputed"], 3),
            "table_mb_per_1k_transitions": round(
                sum(t.element_size() * t[0].numel() for t in table.take(torch.arange(1))) * 1000 / 2**20, 2),
            "token_ids_mb_per_1k_transitions": round(4 * tokens.ids.numel() / tokens.n_transitions * 1000 / 2**20, 4)}


def default_corpus() -> Path:
    shared = ROOT.parent / "shared" / "data" / "helpsteer_dev.jsonl"
    return shared if shared.is_file() else ROOT / "tests" / "data" / "tiny_corpus.jsonl"

