"""What each change to the model did to its held-out fit: the README's ablation table.

    python -m bench.ablation [--corpus FILE] [--epochs 6] [--out-dir runs/ablation] [--only NAME ...]
                             [--threads N] [--out FILE]

Each variant is trained from scratch with ``sdecore.train_model`` (the same corpus, split, seed and
schedule; ``--epochs`` each, best epoch by validation loss, no map), then scored with
``sdecore.evaluate_checkpoint`` on the validation split, as ``python -m sdecore evaluate`` does.
Each row gives the SDE's token perplexity, increment NLL and coverage90, and the increment NLL
of the continuous baselines it must beat (ar1 and brownian, fitted to the data alone, are the
same in every row; drift_only is the variant's own drift with a constant sigma). On a 2-core CPU a variant takes
about 12 minutes at 6 epochs.

It prints one JSON object (and writes it with ``--out``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench import emit

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "data" / "helpsteer_dev.jsonl"
# name -> (what changes from the shipped configuration, ModelConfig fields, TrainConfig fields)
VARIANTS = {
    "no_readout": ("no read-out: the emission reads x + mu dt and the cross-entropy trains the drift",
                   {"readout_hidden": 0}, {}),
    "readout_ce_drift": ("read-out, the cross-entropy also training the drift", {}, {"ce_trains_drift": True}),
    "readout": ("read-out (512 wide), the drift fitted to the increments alone (shipped)", {}, {}),
    "readout_256": ("read-out 256 wide", {"readout_hidden": 256}, {}),
    "dropout_0.5": ("dropout 0.5 in every net (0.3 shipped)", {"dropout": 0.5}, {}),
    "seed_1": ("the shipped configuration, training seed 1", {}, {"seed": 1}),
}


def run_variant(name: str, corpus: Path, out_dir: Path, epochs: int) -> dict:
    from sdecore import ModelConfig, TrainConfig, evaluate_checkpoint, load_checkpoint, train_model

    change, model_fields, train_fields = VARIANTS[name]
    t0 = time.time()
    history = train_model(corpus, out_dir / name, ModelConfig(**model_fields),
                          TrainConfig(epochs=epochs, map="none", **train_fields), device="cpu", overwrite=True,
                          progress=False)
    seconds = time.time() - t0
    models = evaluate_checkpoint(load_checkpoint(out_dir / name), corpus)["models"]
    sde = models["sde"]
    return {"name": name, "change": change, "best_epoch": history["best_epoch"], "train_seconds": round(seconds),
            "token_ppl": round(sde["token_ppl"], 1), "increment_nll": round(sde["increment_nll"], 4),
            "coverage90": round(sde["coverage90"], 4),
            "baseline_increment_nll": {m: round(models[m]["increment_nll"], 4)
                                       for m in ("ar1", "drift_only", "brownian")}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(CORPUS))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--out-dir", default="runs/ablation", help="one checkpoint folder per variant")
    ap.add_argument("--only", nargs="+", choices=list(VARIANTS), help="these variants only")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (two variants side by side: 1 each)")
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    a = ap.parse_args(argv)
    if not Path(a.corpus).is_file():
        raise SystemExit(f"bench.ablation: corpus {a.corpus} not found")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    rows = [run_variant(name, Path(a.corpus), Path(a.out_dir), a.epochs) for name in (a.only or VARIANTS)]
    emit({"corpus": a.corpus, "epochs": a.epochs, "split": "validation", "rows": rows}, a.out)


if __name__ == "__main__":
    main()
