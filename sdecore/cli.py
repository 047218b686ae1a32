"""Command line: ``python -m sdecore {train,sample,evaluate,frontier,info}`` (also the ``sdecore``
script). The contract is docs/design.md §5.1; the valid ranges are §5.2.

Bad input exits with status 2 and one line on stderr that says what is wrong (§5.5). This
module is an entry point: it makes the process-wide settings (docs/design.md §6.3) before
anything imports torch, so the engine's modules are imported inside the commands.
"""

from __future__ import annotations

from .process_setup import configure_threads

configure_threads()

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from . import limits  # noqa: E402
from .extras import MissingExtra  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _arg(check, *args):
    """An argparse type from one of :mod:`sdecore.limits`' checks, so the command line, the
    library and the dashboard share one definition of every range."""
    def conv(s: str):
        try:
            return check(s, *args)
        except ValueError as exc:
            _, _, rest = str(exc).partition(" must be ")  # argparse names the flag itself
            raise argparse.ArgumentTypeError("must be " + rest if rest else str(exc)) from None
    conv.__name__ = getattr(check, "__name__", "value")
    return conv


def _limit(name: str):
    def check(s: str):
        return limits.check_limit(name.replace("-", "_"), s, "--" + name)
    return _arg(check)


_POSITIVE = _arg(limits.check_int, "value", 1)
_SEED = _arg(limits.check_seed)


def build_parser() -> argparse.ArgumentParser:
    from .config import TrainConfig  # dataclass defaults only; no torch

    p = _Parser(prog="sdecore", description="Text generation as a stochastic differential equation "
                "over token embeddings: train, sample, evaluate, inspect.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", type=_arg(limits.check_device), default="auto",
                        help="where to compute: auto (CUDA when present), cpu, cuda or cuda:N")
    common.add_argument("--verbose", action="store_true",
                        help="show progress messages, every warning and the libraries' own progress bars")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    model = {"default": None, "help": "checkpoint folder (default: assets/model)"}
    corpus = {"required": True, "help": "local .jsonl/.json/.csv/.parquet file or a Hugging Face dataset name"}

    t = sub.add_parser("train", parents=[common], help="fit drift, diffusion and emission on a corpus")
    t.add_argument("--corpus", **corpus)
    t.add_argument("--out", required=True, help="checkpoint folder to write")
    t.add_argument("--epochs", type=_POSITIVE, default=TrainConfig.epochs)
    t.add_argument("--max-rows", type=_POSITIVE, default=None, help="read only the corpus's first rows")
    t.add_argument("--seed", type=_SEED, default=TrainConfig.seed)
    t.add_argument("--batch-size", type=_POSITIVE, default=TrainConfig.batch_size,
                   help="transitions per optimisation step, per process under torchrun")
    t.add_argument("--resume", action="store_true", help="continue from the folder's last saved epoch")
    t.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    t.add_argument("--map", choices=limits.MAP_KINDS, default="none",
                   help="reference map to fit for the dashboard (umap: about a minute more)")
    t.add_argument("--precision", choices=limits.PRECISIONS, default=TrainConfig.precision,
                   help="bf16: the nets' forward pass under bfloat16 autocast (for GPUs with bfloat16 units)")
    t.add_argument("--no-report", action="store_true",
                   help="skip the held-out evaluation that follows training (report.json)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", parents=[common], help="generate continuations of a prompt")
    s.add_argument("--prompt", required=True)
    s.add_argument("--model", **model)
    s.add_argument("--paths", type=_limit("paths"), default=4)
    s.add_argument("--tokens", type=_limit("tokens"), default=32)
    s.add_argument("--diffusion-scale", type=_limit("diffusion-scale"), default=1.0)
    s.add_argument("--solver", choices=limits.SOLVERS, default="em")
    s.add_argument("--substeps", type=_limit("substeps"), default=1)
    s.add_argument("--seed", type=_SEED, default=0)
    s.add_argument("--temperature", type=_arg(limits.check_temperature), default=0.0,
                   help="0 decodes the most likely token; above 0 samples from the emission")
    s.add_argument("--no-snap", action="store_true", help="keep the continuous path (no snapping to tokens)")
    s.add_argument("--format", choices=["text", "json"], default="text")
    s.add_argument("--no-progress", action="store_true",
                   help="no progress bar (it shows on a terminal for runs longer than two seconds)")

    e = sub.add_parser("evaluate", parents=[common], help="held-out metrics of the SDE against baselines")
    e.add_argument("--corpus", **corpus)
    e.add_argument("--model", **model)
    e.add_argument("--split", choices=["validation", "all"], default="validation")
    e.add_argument("--fit-corpus", default=None, help="corpus whose train split fits the baselines (default: --corpus)")
    e.add_argument("--max-rows", type=_POSITIVE, default=None)
    e.add_argument("--save", action="store_true", help="also write report.json into the model folder (the dashboard "
                   "reads it; train writes the validation report there already)")
    e.add_argument("--format", choices=["text", "json"], default="text")

    f = sub.add_parser("frontier", parents=[common],
                       help="relevance, diversity and closeness of generated text as the scale sweeps")
    f.add_argument("--corpus", **corpus)
    f.add_argument("--model", **model)
    f.add_argument("--fit-corpus", default=None, help="corpus whose train split fits the bigram (default: --corpus)")
    f.add_argument("--scales", type=_limit("diffusion-scale"), nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0])
    f.add_argument("--max-prompts", type=_POSITIVE, default=12)
    f.add_argument("--paths", type=_limit("paths"), default=4)
    f.add_argument("--tokens", type=_limit("tokens"), default=24)
    f.add_argument("--lengths", type=_limit("tokens"), nargs="+", default=[16, 64, 256])
    f.add_argument("--seed", type=_SEED, default=0)
    f.add_argument("--max-rows", type=_POSITIVE, default=None)
    f.add_argument("--save", action="store_true",
                   help="also write frontier.json into the model folder (the dashboard reads it)")
    f.add_argument("--format", choices=["text", "json"], default="text")

    i = sub.add_parser("info", parents=[common], help="describe a checkpoint")
    i.add_argument("--model", **model)
    return p


def _device(a):
    from .runtime import resolve_device

    return resolve_device(a.device)


def _is_main_process() -> bool:
    """Rank 0 of a torchrun job (or a plain run): the process that writes shared files."""
    return int(os.environ.get("RANK", "0")) == 0


def _cmd_train(a) -> int:
    from .config import ModelConfig, TrainConfig
    from .train import train_model

    tcfg = TrainConfig(epochs=a.epochs, max_rows=a.max_rows, seed=a.seed, map=a.map, batch_size=a.batch_size,
                       precision=a.precision)
    # resuming continues the saved model configuration (the command line has no flags for it)
    history = train_model(a.corpus, a.out, None if a.resume else ModelConfig(), tcfg, device=a.device, resume=a.resume,
                          overwrite=a.overwrite, progress=not a.no_progress)
    if not _is_main_process():
        return 0
    best = history.get("best_validation")
    if best is not None:
        print(f"wrote {a.out}: best epoch {history['best_epoch']}, validation total {best['total']:.4f}, "
              f"token perplexity {best['token_ppl']:.1f}")
    if not a.no_report:
        from .evaluate import write_report

        report = write_report(a.out, a.corpus, max_rows=a.max_rows, device=a.device)
        sde = report["models"]["sde"]
        print(f"validation report {a.out}/report.json: token perplexity {sde['token_ppl']:.1f} on "
              f"{report['n_transitions']} transitions (python -m sdecore evaluate prints the baselines)")
    return 0


def _cmd_sample(a) -> int:
    from .checkpoint import load_checkpoint
    from .simulate import path_texts, simulate_paths

    ckpt = load_checkpoint(a.model, device=_device(a))
    res = simulate_paths(ckpt.model, ckpt.embedder, a.prompt, paths=a.paths, tokens=a.tokens,
                         diffusion_scale=a.diffusion_scale, solver=a.solver, substeps=a.substeps, seed=a.seed,
                         snap=not a.no_snap, temperature=a.temperature, progress=not a.no_progress)
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

    ckpt = load_checkpoint(a.model, device=_device(a))
    report = evaluate_checkpoint(ckpt, a.corpus, split=a.split, fit_corpus=a.fit_corpus, max_rows=a.max_rows)
    if a.save:
        write_json(ckpt.folder / REPORT, report)
    print(json.dumps(report, indent=2) if a.format == "json" else format_report(report))
    return 0


def _cmd_frontier(a) -> int:
    from .checkpoint import load_checkpoint
    from .frontier import FrontierSettings, format_frontier, frontier_report, write_frontier

    settings = FrontierSettings(scales=tuple(a.scales), max_prompts=a.max_prompts, paths=a.paths, tokens=a.tokens,
                                seed=a.seed, lengths=tuple(a.lengths))
    ckpt = load_checkpoint(a.model, device=_device(a))
    report = frontier_report(ckpt, a.corpus, settings, fit_corpus=a.fit_corpus, max_rows=a.max_rows)
    if a.save:
        write_frontier(ckpt.folder, report)
    print(json.dumps(report, indent=2) if a.format == "json" else format_frontier(report))
    return 0


def _cmd_info(a) -> int:
    from .checkpoint import load_checkpoint
    from .model import parameter_count

    device = _device(a)
    ckpt = load_checkpoint(a.model, device=device)
    cfg, hist = ckpt.config, ckpt.history
    print(f"model folder:   {ckpt.folder}")
    print(f"format version: {cfg['format_version']}")
    print(f"embedder:       {cfg['embedder']['name']} (table {cfg['embedder']['fingerprint']})")
    print(f"parameters:     {parameter_count(ckpt.model):,} trainable")
    print(f"device:         {device} (--device {a.device})")
    print(f"data credit:    {ckpt.credit}")
    print("model config:")
    for k, v in cfg["model"].items():
        print(f"  {k}: {v}")
    best, ref = hist.get("best_validation"), hist.get("references")
    if best:
        print(f"best validation epoch {hist['best_epoch']} of {len(hist['epochs'])} "
              f"({hist.get('n_val_transitions', '?')} validation transitions, "
              f"{hist.get('val_prompts', '?')} held-out prompts):")
        print(f"  drift loss      {best['drift']:.4f}" +
              (f"   (zero-drift reference {ref['drift_zero_drift']:.4f})" if ref else ""))
        print(f"  diffusion loss  {best['diffusion']:.4f}" +
              (f"   (constant-sigma reference {ref['diffusion_constant_sigma']:.4f})" if ref else ""))
        print(f"  emission CE     {best['ce']:.4f}   (token perplexity {best['token_ppl']:.1f})")
        print(f"  total           {best['total']:.4f}")
    else:
        print("no training history in this folder")
    return 0


class _FoldRepeats(logging.Filter):
    """Lets the first record of each message template through and counts the rest, so a
    warning raised once per corpus row (or per prompt) prints one line, and one summary line
    at the end says how many more there were."""

    def __init__(self):
        super().__init__()
        self.seen: dict[tuple[str, str], list] = {}  # (logger, template) -> [count, first message]

    def filter(self, record: logging.LogRecord) -> bool:
        entry = self.seen.setdefault((record.name, str(record.msg)), [0, record.getMessage()])
        entry[0] += 1
        return entry[0] == 1

    def summary(self) -> list[str]:
        return [f"WARNING: {n - 1} more like \"{first[:60]}\" (--verbose shows each)"
                for n, first in self.seen.values() if n > 1]


def _setup_logging(verbose: bool) -> _FoldRepeats | None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("sdecore").setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose:
        return None
    from .process_setup import quiet_libraries

    quiet_libraries()
    fold = _FoldRepeats()
    handler.addFilter(fold)
    return fold


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fold = _setup_logging(args.verbose)
    handler = {"train": _cmd_train, "sample": _cmd_sample, "evaluate": _cmd_evaluate, "frontier": _cmd_frontier,
               "info": _cmd_info}[args.command]
    def summary() -> None:  # before any error line, so an error stays the last line
        for line in (fold.summary() if fold is not None else []):
            print(line, file=sys.stderr)

    # Under torchrun every rank runs the same checks on the same input and fails alike: only rank 0
    # prints such an error, so a failed job shows one line, not one per process run together. A
    # failure of a rank's own (a file its node cannot write) names the rank.
    rank = os.environ.get("RANK", "0")
    rank = int(rank) if rank.isdigit() else 0
    try:
        limits.progress_delay()  # before torchsde imports tqdm, which reads TQDM_DELAY less clearly
        code = handler(args)
        summary()
        return code
    except (ValueError, FileNotFoundError, MissingExtra) as exc:
        if rank == 0:
            summary()
            msg = " ".join(str(exc).split())
            print(f"sdecore {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user named cannot be read or written (permissions, a full disk, ...)
        summary()
        where = f" on rank {rank}" if rank else ""
        print(f"sdecore {args.command}: error{where}: {exc.strerror or exc} ({exc.filename or 'a file'})",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        summary()
        print(f"sdecore {args.command}: interrupted", file=sys.stderr)
        return 130
