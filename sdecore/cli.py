"""Command line: ``python -m sdecore {train,sample,evaluate,frontier,info}`` (also the ``sdecore`` script).

Bad input exits with status 2 and one line on stderr that says what is wrong.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .config import LIMITS, SOLVERS, ModelConfig, TrainConfig


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_in(name: str):
    lo, hi = LIMITS[name]

    def conv(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer between {lo} and {hi}, got {s!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {v}")
        return v
    return conv


def _scale(s: str) -> float:
    lo, hi = LIMITS["diffusion_scale"]
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number between {lo} and {hi}, got {s!r}") from None
    if not (v == v and lo <= v <= hi):  # v == v rejects NaN; the range rejects inf
        raise argparse.ArgumentTypeError(f"must be a finite number between {lo:g} and {hi:g}, got {s}")
    return v


def _at_least(lo: int, what: str):
    def conv(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be {what}, got {v}")
        return v
    return conv


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sdecore", description="Text generation as a stochastic differential equation "
                "over token embeddings: train, sample, inspect.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    device = {"choices": ["auto", "cpu", "cuda"], "default": "auto",
              "help": "where to compute (auto: CUDA when present)"}
    model = {"default": None, "help": "checkpoint folder (default: assets/model)"}

    t = sub.add_parser("train", help="fit drift, diffusion and emission on a corpus")
    t.add_argument("--corpus", required=True, help="local .jsonl/.json/.csv/.parquet or a HF dataset name")
    t.add_argument("--out", required=True, help="checkpoint folder to write")
    t.add_argument("--epochs", type=_at_least(1, "an integer of at least 1"), default=TrainConfig.epochs)
    t.add_argument("--max-rows", type=_at_least(1, "an integer of at least 1"), default=None)
    t.add_argument("--device", **device)
    t.add_argument("--seed", type=_at_least(0, "a non-negative integer"), default=0)
    t.add_argument("--batch-size", type=_at_least(1, "an integer of at least 1"), default=TrainConfig.batch_size,
                   help="transitions per optimisation step (per process under torchrun)")
    t.add_argument("--resume", action="store_true", help="continue from the folder's last saved epoch")
    t.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    t.add_argument("--map", choices=["none", "pca", "umap"], default="none",
                   help="reference map to fit (umap: about a minute more, for the dashboard)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="generate continuations of a prompt")
    s.add_argument("--prompt", required=True)
    s.add_argument("--model", **model)
    s.add_argument("--paths", type=_int_in("paths"), default=4)
    s.add_argument("--tokens", type=_int_in("tokens"), default=32)
    s.add_argument("--diffusion-scale", type=_scale, default=1.0)
    s.add_argument("--solver", choices=SOLVERS, default="em")
    s.add_argument("--substeps", type=_int_in("substeps"), default=1)
    s.add_argument("--seed", type=_at_least(0, "a non-negative integer"), default=0)
    s.add_argument("--temperature", type=float, default=0.0,
                   help="0 decodes the most likely token; above 0 samples from the emission")
    s.add_argument("--no-snap", action="store_true", help="keep the continuous path (no snapping to tokens)")
    s.add_argument("--device", **device)
    s.add_argument("--format", choices=["text", "json"], default="text")

    e = sub.add_parser("evaluate", help="held-out metrics of the SDE against baselines")
    e.add_argument("--corpus", required=True, help="local .jsonl/.json/.csv/.parquet or a HF dataset name")
    e.add_argument("--model", **model)
    e.add_argument("--split", choices=["validation", "all"], default="validation")
    e.add_argument("--fit-corpus", default=None, help="corpus whose train split fits the baselines (default: --corpus)")
    e.add_argument("--max-rows", type=_at_least(1, "an integer of at least 1"), default=None)
    e.add_argument("--save", action="store_true", help="also write report.json into the model folder (the dashboard "
                   "reads it; train writes the validation report there already)")
    e.add_argument("--format", choices=["text", "json"], default="text")

    f = sub.add_parser("frontier", help="relevance, diversity and closeness of generated text as the scale sweeps")
    f.add_argument("--corpus", required=True, help="local .jsonl/.json/.csv/.parquet or a HF dataset name")
    f.add_argument("--model", **model)
    f.add_argument("--fit-corpus", default=None, help="corpus whose train split fits the bigram (default: --corpus)")
    f.add_argument("--scales", type=_scale, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0])
    f.add_argument("--max-prompts", type=_at_least(1, "an integer of at least 1"), default=12)
    f.add_argument("--paths", type=_int_in("paths"), default=4)
    f.add_argument("--tokens", type=_int_in("tokens"), default=24)
    f.add_argument("--lengths", type=_int_in("tokens"), nargs="+", default=[16, 64, 256])
    f.add_argument("--seed", type=_at_least(0, "a non-negative integer"), default=0)
    f.add_argument("--max-rows", type=_at_least(1, "an integer of at least 1"), default=None)
    f.add_argument("--save", action="store_true",
                   help="also write frontier.json into the model folder (the dashboard reads it)")
    f.add_argument("--format", choices=["text", "json"], default="text")

    i = sub.add_parser("info", help="describe a checkpoint")
    i.add_argument("--model", **model)
    return p


def _cmd_train(a) -> int:
    from .train import train_model

    tcfg = TrainConfig(epochs=a.epochs, max_rows=a.max_rows, seed=a.seed, map=a.map, batch_size=a.batch_size)
    history = train_model(a.corpus, a.out, ModelConfig(), tcfg, device=a.device, resume=a.resume,
                          overwrite=a.overwrite, progress=not a.no_progress)
    best = history.get("best_validation")
    if best is not None:
        print(f"wrote {a.out}: best epoch {history['best_epoch']}, validation total {best['total']:.4f}, "
              f"token perplexity {best['token_ppl']:.1f}")
    return 0


def _cmd_sample(a) -> int:
    import math

    from .checkpoint import load_checkpoint
    from .runtime import resolve_device
    from .simulate import path_texts, simulate_paths

    if not (a.temperature >= 0 and math.isfinite(a.temperature)):
        raise ValueError(f"--temperature must be a finite number of at least 0, got {a.temperature}")
    ckpt = load_checkpoint(a.model, device=resolve_device(a.device))
    res = simulate_paths(ckpt.model, ckpt.embedder, a.prompt, paths=a.paths, tokens=a.tokens,
                         diffusion_scale=a.diffusion_scale, solver=a.solver, substeps=a.substeps, seed=a.seed,
                         snap=not a.no_snap, temperature=a.temperature)
    paths = path_texts(ckpt.embedder, res)
    if a.format == "json":
        print(json.dumps({"prompt": a.prompt, "diffusion_scale": a.diffusion_scale, "seed": a.seed,
                          "paths": paths}, indent=2))
    else:
        print(f"prompt: {a.prompt}")
        for k, p in enumerate(paths):
            flag = "  [diverged]" if p["diverged"] else ""
            print(f"[{k}]{flag} {p['text']}")
    return 0


def _cmd_evaluate(a) -> int:
    from .checkpoint import REPORT, load_checkpoint, write_json
    from .evaluate import evaluate_checkpoint, format_report

    ckpt = load_checkpoint(a.model)
    report = evaluate_checkpoint(ckpt, a.corpus, split=a.split, fit_corpus=a.fit_corpus, max_rows=a.max_rows)
    if a.save:
        write_json(ckpt.folder / REPORT, report)
    print(json.dumps(report, indent=2) if a.format == "json" else format_report(report))
    return 0


def _cmd_frontier(a) -> int:
    from .checkpoint import load_checkpoint
    from .frontier import format_frontier, frontier_report, write_frontier

    ckpt = load_checkpoint(a.model)
    report = frontier_report(ckpt, a.corpus, fit_corpus=a.fit_corpus, scales=a.scales, max_prompts=a.max_prompts,
                             paths=a.paths, tokens=a.tokens, seed=a.seed, lengths=a.lengths, max_rows=a.max_rows)
    if a.save:
        write_frontier(ckpt.folder, report)
    print(json.dumps(report, indent=2) if a.format == "json" else format_frontier(report))
    return 0


def _cmd_info(a) -> int:
    from .checkpoint import load_checkpoint
    from .model import parameter_count
    from .runtime import resolve_device

    ckpt = load_checkpoint(a.model)
    cfg, hist = ckpt.config, ckpt.history
    print(f"model folder:   {ckpt.folder}")
    print(f"format version: {cfg['format_version']}")
    print(f"embedder:       {cfg['embedder']['name']} (table {cfg['embedder']['fingerprint']})")
    print(f"parameters:     {parameter_count(ckpt.model):,} trainable")
    print(f"device:         {resolve_device('auto')} (what --device auto would use)")
    print(f"data credit:    {ckpt.credit}")
    print("model config:")
    for k, v in cfg["model"].items():
        print(f"  {k}: {v}")
    best, ref = hist.get("best_validation"), hist.get("references")
    if best:
        print(f"best validation epoch {hist['best_epoch']} of {len(hist['epochs'])} "
              f"({hist.get('n_val_transitions', '?')} validation transitions):")
        print(f"  drift loss      {best['drift']:.4f}" +
              (f"   (zero-drift reference {ref['drift_zero_drift']:.4f})" if ref else ""))
        print(f"  diffusion loss  {best['diffusion']:.4f}" +
              (f"   (constant-sigma reference {ref['diffusion_constant_sigma']:.4f})" if ref else ""))
        print(f"  emission CE     {best['ce']:.4f}   (token perplexity {best['token_ppl']:.1f})")
        print(f"  total           {best['total']:.4f}")
    else:
        print("no training history in this folder")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    handler = {"train": _cmd_train, "sample": _cmd_sample, "evaluate": _cmd_evaluate, "frontier": _cmd_frontier,
               "info": _cmd_info}[args.command]
    try:
        return handler(args)
    except (ValueError, FileNotFoundError) as exc:
        msg = " ".join(str(exc).split())
        print(f"sdecore {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user named cannot be read or written (permissions, a full disk, ...)
        print(f"sdecore {args.command}: error: {exc.strerror or exc} ({exc.filename or 'a file'})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sdecore {args.command}: interrupted", file=sys.stderr)
        return 130
