"""Quality of generated text as the diffusion scale sweeps: the relevance-versus-diversity frontier
(docs/design.md §4.4).

For each generator (the SDE at each diffusion scale ``s``, and a Kneser-Ney bigram sampled at
temperature 1 as the reference) and the distinct prompts of the evaluated (validation) split:

- ``relevance``: mean cosine similarity between each continuation's sentence embedding and its
  own prompt's (all-MiniLM-L6-v2 sentence model, normalised embeddings); ``relevance_random``:
  the same continuations against another prompt of the set, picked by a fixed seeded
  derangement, so that ``relevance - relevance_random`` is what the prompt itself contributes.
  An empty continuation (a path that diverged at its first step) scores 0;
- ``distinct2``: distinct WordPiece bigrams over all bigrams of a prompt's continuations (pairs
  inside one continuation only), averaged over prompts; ``self_bleu``: sacrebleu sentence BLEU
  (0-100) of each continuation against the other continuations of its prompt, averaged. Higher
  distinct-2 and lower self-BLEU mean more varied text;
- ``bleu`` (sacrebleu corpus BLEU, 0-100) and ``rouge_l`` (ROUGE-L F, 0-1) of continuations of
  ``prompt + first prefix_tokens tokens of a held-out response`` against the response's true
  next ``cont_tokens`` tokens: closeness to real text;
- ``diverged_share``: share of SDE paths stopped as diverged (a bigram path never diverges).

Two probes of the SDE beside: relevance and diverged share as continuations grow longer (one
run of the longest length, read at each length: the same paths, growing), and on a few
out-of-distribution prompts (:data:`OOD_PROMPTS`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .baselines import KneserNeyBigramLM
from .checkpoint import FRONTIER, Checkpoint, write_json
from .config import DATA_CREDIT, TrainConfig
from .data import load_corpus, split_by_prompt
from .embedding import Embedder
from .limits import MAX_PROMPT_TOKENS, check_int, check_lengths, check_limit, check_scales, check_seed
from .simulate import simulate_paths
from .textquality import bleu, distinct_n, mean_relevance, require_text_measures, rouge_l, self_bleu
from .tokendata import encode_corpus

log = logging.getLogger(__name__)

DEFAULT_SCALES = (0.0, 0.25, 0.5, 1.0, 2.0)
LENGTH_SCALE = 0.5
OOD_SCALES = (0.5, 1.0)
BIGRAM_DISCOUNT = 0.75

# Prompts unlike HelpSteer's English questions: does the SDE stay on them, and does it stay sane?
OOD_PROMPTS: dict[str, str] = {
    "code": "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "verse": "Shall I compare thee to a summer's day? Thou art more lovely and more temperate:",
    "french": "Quelle est la meilleure façon d'apprendre à cuisiner le pain à la maison ?",
    "german": "Wie kann ich meinen Garten im Herbst auf den Winter vorbereiten?",
    "list": "Shopping list:\n1. eggs\n2. milk\n3. flour\n4.",
    "math": "What is the derivative of x^3 + 2x with respect to x, and why?",
}


def derangement(n: int, seed: int) -> list[int] | None:
    """A seeded permutation of range(n) with no fixed point (Sattolo's algorithm: one random
    n-cycle); None for n < 2, where no derangement exists."""
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))  # j < i, never i itself: the result is a single cycle
        perm[i], perm[j] = perm[j], perm[i]
    return perm


# --------------------------------------------------------------------------- generators
def sample_bigram(lm: KneserNeyBigramLM, starts: Sequence[int], *, paths: int, tokens: int, seed: int,
                  temperature: float = 1.0) -> list[list[list[int]]]:
    """``paths`` continuations of ``tokens`` ids for each start id, sampled token by token from
    ``lm`` (all starts in one batch, one seeded generator): (starts, paths, tokens) as lists."""
    if not starts:
        return []
    gen = torch.Generator().manual_seed(seed)
    prev = torch.as_tensor(list(starts), dtype=torch.long).repeat_interleave(paths)
    out = torch.empty(prev.numel(), tokens, dtype=torch.long)
    for k in range(tokens):
        prev = lm.sample(prev, gen, temperature)
        out[:, k] = prev
    return [[row.tolist() for row in block] for block in out.split(paths)]


def _sde_continuations(ckpt: Checkpoint, texts: Sequence[str], paths: int, tokens: int, scale: float,
                       seed: int) -> tuple[list[list[list[int]]], list[list[int]]]:
    """SDE continuations per prompt text: ids (prompts, paths, <= tokens) and each path's
    diverged_at step (-1 for a path that never diverged)."""
    ids, at = [], []
    sim_log = logging.getLogger(simulate_paths.__module__)
    level = sim_log.level
    sim_log.setLevel(logging.ERROR)  # its long-prompt warning would repeat at every scale; the report logs it once
    try:
        for text in texts:
            res = simulate_paths(ckpt.model, ckpt.embedder, text, paths=paths, tokens=tokens, diffusion_scale=scale,
                                 seed=seed)
            ids.append([res.continuation(i) for i in range(paths)])
            at.append([int(v) for v in res.diverged_at])
    finally:
        sim_log.setLevel(level)
    return ids, at


# --------------------------------------------------------------------------- scoring
def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _relevance_pair(texts: list[list[str]], prompts: Sequence[str], perm: list[int] | None,
                    cache: dict[str, np.ndarray] | None = None) -> tuple[float | None, float | None]:
    """Mean relevance of continuations ``texts`` (prompts, paths) to their own prompt and to prompt perm[i]."""
    flat = [t for block in texts for t in block]
    if not flat:
        return None, None
    own = [prompts[i] for i, block in enumerate(texts) for _ in block]
    rel = mean_relevance(flat, own, cache)
    if perm is None:
        return rel, None
    other = [prompts[perm[i]] for i, block in enumerate(texts) for _ in block]
    return rel, mean_relevance(flat, other, cache)


def _diversity(ids: list[list[list[int]]], texts: list[list[str]]) -> tuple[float | None, float | None]:
    return _mean(distinct_n(block, 2) for block in ids), _mean(self_bleu(block) for block in texts)


def _decode_all(embedder: Embedder, ids: list[list[list[int]]]) -> list[list[str]]:
    return [[embedder.decode(c) for c in block] for block in ids]


def _closeness(hyps: list[list[str]], refs: Sequence[str]) -> tuple[float | None, float | None]:
    flat = [h for block in hyps for h in block]
    flat_refs = [refs[i] for i, block in enumerate(hyps) for _ in block]
    return bleu(flat, flat_refs), rouge_l(flat, flat_refs)


def _probe_items(embedder: Embedder, df: pd.DataFrame, prompts: Sequence[str], prefix_tokens: int,
                 cont_tokens: int) -> list[dict]:
    """Per prompt, the first response with more than ``prefix_tokens`` tokens: the conditioning
    text (prompt + response prefix), the prefix's last id, and the true next tokens' text. The
    prefix is extended to the end of a word (past any ``##`` pieces), so that the true
    continuation starts a word, as a continuation does (docs/design.md §3)."""
    items = []
    piece = embedder.continuation_mask
    for prompt in prompts:
        for response in df.loc[df["prompt"] == prompt, "response"]:
            ids = embedder.encode(response)
            cut = prefix_tokens
            while cut < len(ids) and piece[ids[cut]]:
                cut += 1
            if len(ids) > cut:
                items.append({"text": prompt + " " + embedder.decode(ids[:cut]), "last": ids[cut - 1],
                              "ref": embedder.decode(ids[cut : cut + cont_tokens])})
                break
    return items


# --------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class FrontierSettings:
    """What :func:`frontier_report` generates and measures.

    At most ``max_prompts`` validation prompts, ``paths`` continuations of ``tokens`` tokens
    each at every diffusion scale in ``scales``, all from one ``seed``. Closeness: continuations
    of ``cont_tokens`` after a held-out response's first ``prefix_tokens``. The length probe
    reads one run at scale 0.5 at each of ``lengths`` on the first ``length_prompts`` prompts
    with ``length_paths`` paths; the out-of-distribution probe runs at ``ood_scales``.
    """

    scales: tuple[float, ...] = DEFAULT_SCALES
    max_prompts: int = 12
    paths: int = 4
    tokens: int = 24
    prefix_tokens: int = 16
    cont_tokens: int = 16
    seed: int = 0
    lengths: tuple[int, ...] = (16, 64, 256)
    length_prompts: int = 4
    length_paths: int = 2
    ood_scales: tuple[float, ...] = OOD_SCALES

    def validated(self) -> FrontierSettings:
        """The settings checked against docs/design.md §5.2 (``ValueError`` naming the flag),
        with the scales deduplicated and the lengths sorted."""
        return replace(
            self, scales=check_scales(self.scales, "--scales"), ood_scales=check_scales(self.ood_scales, "ood_scales"),
            max_prompts=check_int(self.max_prompts, "--max-prompts", 1), paths=check_limit("paths", self.paths),
            tokens=check_limit("tokens", self.tokens),
            prefix_tokens=check_int(self.prefix_tokens, "--prefix-tokens", 1, MAX_PROMPT_TOKENS),
            cont_tokens=check_limit("tokens", self.cont_tokens, "--cont-tokens"), seed=check_seed(self.seed),
            lengths=check_lengths(self.lengths, "--lengths"),
            length_prompts=check_int(self.length_prompts, "length_prompts", 1),
            length_paths=check_limit("paths", self.length_paths, "length_paths"))


def frontier_report(ckpt: Checkpoint, corpus: str | Path, settings: FrontierSettings | None = None, *,
                    fit_corpus: str | Path | None = None, max_rows: int | None = None) -> dict:
    """Generated-text quality of the SDE at each diffusion scale, and of a Kneser-Ney bigram,
    on the validation split of ``corpus`` (see the module docstring for the measures and
    :class:`FrontierSettings` for what is generated). The bigram is fitted on the train split
    of ``fit_corpus`` (default: ``corpus``); both read at most ``max_rows`` rows.

    Returns the JSON-ready ``{"corpus", "fit_corpus", "split", "n_prompts", "settings", "rows",
    "lengths", "out_of_distribution", "data_credit"}``; ``rows`` holds one entry per
    (generator, scale) with ``generator`` "sde" or "bigram" (whose ``scale`` is None), and the
    keys ``relevance``, ``relevance_random``, ``distinct2``, ``self_bleu``, ``bleu``, ``rouge_l``,
    ``diverged_share``, ``n_continuations`` (a measure a setting cannot define is None).
    Raises ``ValueError`` for bad settings or a corpus with no validation prompts and
    ``FileNotFoundError`` for a missing corpus.
    """
    st = (settings or FrontierSettings()).validated()
    if max_rows is not None:
        check_int(max_rows, "--max-rows", 1)
    require_text_measures()
    ckpt.model.eval()
    emb = ckpt.embedder
    train_cfg = ckpt.history.get("train_config", {})
    val_fraction = train_cfg.get("val_fraction", TrainConfig.val_fraction)
    eval_df = split_by_prompt(load_corpus(corpus, max_rows), val_fraction).validation
    if eval_df.empty:
        raise ValueError(f"corpus {corpus} has no validation prompts (val_fraction {val_fraction}); "
                         "give a corpus with at least two distinct prompts")
    fit_src = fit_corpus if fit_corpus is not None else corpus
    fit_df = split_by_prompt(load_corpus(fit_src, max_rows), val_fraction).train
    if fit_df.empty:
        raise ValueError(f"the fit corpus {fit_src} has no train rows; give one with at least two distinct prompts")
    prompts = [p for p in dict.fromkeys(eval_df["prompt"]) if p.strip()][:st.max_prompts]
    if not prompts:
        raise ValueError(f"corpus {corpus} has no non-empty validation prompts")
    perm = derangement(len(prompts), st.seed)
    cache: dict[str, np.ndarray] = {}  # sentence embeddings, so each prompt is embedded once
    n_long = sum(len(emb.encode(p)) > MAX_PROMPT_TOKENS for p in prompts)
    if n_long:
        log.warning("%d of %d prompts have more than %d tokens; only their last %d are read",
                    n_long, len(prompts), MAX_PROMPT_TOKENS, MAX_PROMPT_TOKENS)

    fit_data = encode_corpus(emb, fit_df, training=True, include_prompts=train_cfg.get("include_prompts", True))
    lm = KneserNeyBigramLM().fit(fit_data, emb.support_mask, discount=BIGRAM_DISCOUNT)
    del fit_df, fit_data  # the bigram holds its counts; the fit corpus is not needed again
    items = _probe_items(emb, eval_df, prompts, st.prefix_tokens, st.cont_tokens)
    if not items:
        log.warning("no validation response has more than %d tokens: BLEU and ROUGE-L are undefined", st.prefix_tokens)
    refs = [it["ref"] for it in items]

    rows = []
    for scale in st.scales:
        log.info("frontier: SDE at diffusion scale %g on %d prompts", scale, len(prompts))
        ids, at = _sde_continuations(ckpt, prompts, st.paths, st.tokens, scale, st.seed)
        close_ids, _ = _sde_continuations(ckpt, [it["text"] for it in items], st.paths, st.cont_tokens, scale, st.seed)
        rows.append(_row("sde", scale, emb, ids, prompts, perm, _decode_all(emb, close_ids), refs,
                         float(np.mean([a >= 0 for block in at for a in block])), cache))
    log.info("frontier: Kneser-Ney bigram on %d prompts", len(prompts))
    starts = [emb.encode(p)[-1] for p in prompts]  # every prompt has a token: simulate_paths read it above
    ids = sample_bigram(lm, starts, paths=st.paths, tokens=st.tokens, seed=st.seed)
    close_ids = sample_bigram(lm, [it["last"] for it in items], paths=st.paths, tokens=st.cont_tokens, seed=st.seed)
    rows.append(_row("bigram", None, emb, ids, prompts, perm, _decode_all(emb, close_ids), refs, 0.0, cache))

    settings_out = {**asdict(st), "n_closeness_prompts": len(items)}
    settings_out.update({k: list(v) for k, v in settings_out.items() if isinstance(v, tuple)})
    lengths = length_probe(ckpt, prompts[:st.length_prompts], st.lengths, paths=st.length_paths, seed=st.seed,
                           cache=cache)
    return {"corpus": str(corpus), "fit_corpus": str(fit_src), "split": "validation", "n_prompts": len(prompts),
            "settings": settings_out, "rows": rows, "lengths": lengths,
            "out_of_distribution": ood_probe(ckpt, st.ood_scales, paths=st.paths, tokens=st.tokens, seed=st.seed,
                                             cache=cache),
            "data_credit": DATA_CREDIT}


def _row(generator: str, scale: float | None, emb: Embedder, ids: list[list[list[int]]], prompts: Sequence[str],
         perm: list[int] | None, close_hyps: list[list[str]], refs: Sequence[str], diverged: float,
         cache: dict[str, np.ndarray]) -> dict:
    texts = _decode_all(emb, ids)
    rel, rel_random = _relevance_pair(texts, prompts, perm, cache)
    d2, sb = _diversity(ids, texts)
    b, r = _closeness(close_hyps, refs)
    return {"generator": generator, "scale": scale, "relevance": rel, "relevance_random": rel_random,
            "distinct2": d2, "self_bleu": sb, "bleu": b, "rouge_l": r, "diverged_share": diverged,
            "n_continuations": sum(len(block) for block in ids)}


def length_probe(ckpt: Checkpoint, prompts: Sequence[str], lengths: Sequence[int], *, paths: int, seed: int,
                 scale: float = LENGTH_SCALE, cache: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Relevance (own and random prompt) and diverged share of SDE continuations at each of
    ``lengths`` tokens: one run of the longest length at ``scale``, cut at each length, so a row
    is the same paths grown longer. A path counts as diverged at length n if it diverged before
    its n-th token."""
    lengths = sorted(set(lengths))
    if not prompts or not lengths:
        return []
    ids, at = _sde_continuations(ckpt, prompts, paths, lengths[-1], scale, seed)
    perm = derangement(len(prompts), seed)
    out = []
    for n in lengths:
        texts = [[ckpt.embedder.decode(c[:n]) for c in block] for block in ids]
        rel, rel_random = _relevance_pair(texts, prompts, perm, cache)
        share = float(np.mean([0 <= a < n for block in at for a in block]))
        out.append({"tokens": n, "scale": scale, "relevance": rel, "relevance_random": rel_random,
                    "diverged_share": share, "n_continuations": len(prompts) * paths})
    return out


def ood_probe(ckpt: Checkpoint, scales: Sequence[float], *, paths: int, tokens: int, seed: int,
              prompts: dict[str, str] | None = None, cache: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Relevance and diverged share of SDE continuations of out-of-distribution prompts
    (default :data:`OOD_PROMPTS`) at each scale, with the first path's text as a sample."""
    prompts = OOD_PROMPTS if prompts is None else prompts
    out = []
    for scale in scales:
        ids, at = _sde_continuations(ckpt, list(prompts.values()), paths, tokens, scale, seed)
        for (kind, prompt), block, block_at in zip(prompts.items(), ids, at):
            texts = [ckpt.embedder.decode(c) for c in block]
            out.append({"prompt_kind": kind, "scale": float(scale),
                        "relevance": mean_relevance(texts, [prompt] * len(texts), cache),
                        "diverged_share": float(np.mean([a >= 0 for a in block_at])), "sample": texts[0]})
    return out


# --------------------------------------------------------------------------- output
def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{round(v, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.000"


def format_frontier(report: dict) -> str:
    """A plain-text table of a frontier report: the frontier rows, the length probe and the
    out-of-distribution probe."""
    s = report.get("settings", {})
    lines = [f"corpus {report['corpus']} ({report['split']} split, {report.get('n_prompts', '?')} prompts x "
             f"{s.get('paths', '?')} paths x {s.get('tokens', '?')} tokens; bigram fitted on "
             f"{report.get('fit_corpus', report['corpus'])}); BLEU and self-BLEU 0-100, ROUGE-L 0-1",
             f"{'generator':<10}{'scale':>6}{'relev':>8}{'rel_rnd':>9}{'dist2':>8}{'selfBLEU':>10}{'BLEU':>8}"
             f"{'ROUGE-L':>9}{'diverged':>10}"]
    for r in report["rows"]:
        lines.append(f"{r['generator']:<10}{_fmt(r['scale'], 2):>6}{_fmt(r['relevance']):>8}"
                     f"{_fmt(r['relevance_random']):>9}{_fmt(r['distinct2']):>8}{_fmt(r['self_bleu'], 1):>10}"
                     f"{_fmt(r['bleu'], 2):>8}{_fmt(r['rouge_l']):>9}{_fmt(r['diverged_share'], 2):>10}")
    if report.get("lengths"):
        lines += ["", f"as continuations grow (SDE, scale {_fmt(report['lengths'][0].get('scale'), 2)})",
                  f"{'tokens':>6}{'relev':>8}{'rel_rnd':>9}{'diverged':>10}"]
        for r in report["lengths"]:
            lines.append(f"{r['tokens']:>6}{_fmt(r['relevance']):>8}{_fmt(r['relevance_random']):>9}"
                         f"{_fmt(r['diverged_share'], 2):>10}")
    if report.get("out_of_distribution"):
        lines += ["", "out-of-distribution prompts (SDE)", f"{'prompt':<8}{'scale':>6}{'relev':>8}{'diverged':>10}"
                  "  sample"]
        for r in report["out_of_distribution"]:
            sample = " ".join(str(r.get("sample", "")).split())[:60]
            lines.append(f"{r['prompt_kind']:<8}{_fmt(r['scale'], 2):>6}{_fmt(r['relevance']):>8}"
                         f"{_fmt(r['diverged_share'], 2):>10}  {sample}")
    lines.append(f"data: {report.get('data_credit', DATA_CREDIT)}")
    return "\n".join(lines)


def write_frontier(folder: str | Path, report: dict) -> Path:
    """Write ``report`` to ``folder/frontier.json`` atomically (the dashboard reads it); returns the path."""
    path = Path(folder) / FRONTIER
    write_json(path, report)
    return path
