"""What the nets learned, and the same noise at several scales (docs/design.md §4.6).

- :func:`token_diffusion`: the diffusion's size at each token's own embedding, the state a
  one-token text starts from: where the model is most and least certain of the next step.
- :func:`text_steps`: along a text read with teacher forcing, the diffusion at each position and
  the tokens the drift points to next (decoded where one noiseless step lands).
- :func:`find_cycle` and :func:`drift_attractor`: where the drift alone leads (a cycle of tokens
  the drift-only text settles into, its period) and the smallest diffusion scale whose paths
  leave it.
- :func:`departures` and :func:`compare_scales`: runs on one seed (one Brownian path) at several
  scales, and the first token at which each path leaves the drift-only text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .embedding import Embedder
from .model import TextSDE
from .simulate import Paths, SampleRequest, check_prompt, simulate_requests


def _as_numpy(a: torch.Tensor) -> np.ndarray:
    return a.detach().cpu().numpy().astype(np.float64)


# ----------------------------------------------------------------------------- the diffusion per token
@torch.no_grad()
def token_diffusion(model: TextSDE, ids: torch.Tensor | np.ndarray | list[int], *, chunk: int = 4096) -> np.ndarray:
    """The diffusion's size at each token's embedding: sqrt(mean_d sigma_d^2) at the state of a
    text made of that token alone (x its embedding, the memory empty, t = 0), in standardised units
    per sqrt(time). ids: (n,) -> (n,) float64. Small: the model is sure where the next step goes."""
    model.eval()
    ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=model.emb_mean.device)
    out = []
    for start in range(0, ids_t.numel(), chunk):
        x = model.token_states(ids_t[start:start + chunk])
        h = x.new_zeros(x.shape[0], model.config.memory_dim)
        out.append(model.sigma(x, h, torch.zeros((), device=x.device)).pow(2).mean(-1).sqrt())
    return _as_numpy(torch.cat(out)) if out else np.zeros(0)


@torch.no_grad()
def diffusion_ranking(model: TextSDE, embedder: Embedder, *, among: int = 5000, top: int = 15) -> dict:
    """Tokens ranked by :func:`token_diffusion` among the ``among`` most frequent (by the emission's
    unigram prior; a rare token's sigma was barely trained). Returns ``least`` and ``most`` (lists of
    {"token", "id", "sigma"}, most certain first and least certain first) and ``sigma`` (all
    ``among`` values, for a histogram)."""
    ids = model.emission.frequent_tokens(min(among, int(model.emission.support_mask.sum()))).cpu().numpy()
    sig = token_diffusion(model, ids)
    order = np.argsort(sig, kind="stable")
    toks = embedder.tokens([int(v) for v in ids])

    def rows(idx) -> list[dict]:
        return [{"token": toks[i], "id": int(ids[i]), "sigma": float(sig[i])} for i in idx]

    return {"least": rows(order[:top]), "most": rows(order[::-1][:top]), "sigma": sig, "among": int(len(ids))}


# ----------------------------------------------------------------------------- along a text
@dataclass
class TextSteps:
    """A text read with teacher forcing: per position k (its last ``max_tokens`` tokens), the
    diffusion ``sigma`` (sqrt of the mean sigma_d^2) at the state after token k, and the ``top``
    tokens decoded where one noiseless step lands, read through the read-out, x_k + mu dt + r
    (the token k itself excluded, as in generation, and no word piece after the whole text), with
    their probabilities."""

    tokens: list[str]
    sigma: np.ndarray
    next_tokens: list[list[str]]
    next_probs: np.ndarray


@torch.no_grad()
def text_steps(model: TextSDE, embedder: Embedder, text: str, *, top: int = 5, max_tokens: int = 256) -> TextSteps:
    """:class:`TextSteps` of ``text`` (ValueError when it has no token)."""
    ids = embedder.encode(text)[-max_tokens:]
    if not ids:
        raise ValueError("the text has no tokens")
    model.eval()
    dev = model.emb_mean.device
    idt = torch.as_tensor(ids, device=dev)
    xs = model.token_states(idt)
    hs = model.teacher_forced_memory(xs.unsqueeze(0))[0]
    t = torch.arange(len(ids), device=dev, dtype=torch.float32) * model.config.dt
    _, sig, mean = model.next_token_mean(xs, hs, t)
    logits = model.emission.state_logits(mean)
    logits[torch.arange(len(ids), device=dev), idt] = float("-inf")
    # after the whole text, a continuation's first token starts a word, as in generation (§3)
    logits[-1].masked_fill_(embedder.continuation_mask.to(dev), float("-inf"))
    p, v = torch.softmax(logits, -1).topk(min(top, logits.shape[-1]), dim=-1)
    names = embedder.tokens(v.reshape(-1).tolist())
    k = v.shape[1]
    return TextSteps(tokens=embedder.tokens(ids), sigma=_as_numpy(sig.pow(2).mean(-1).sqrt()),
                     next_tokens=[names[i * k:(i + 1) * k] for i in range(len(ids))], next_probs=_as_numpy(p))


# ----------------------------------------------------------------------------- where the drift leads
def find_cycle(ids, *, min_repeats: int = 3, max_period: int | None = None) -> tuple[int, int] | None:
    """(start, period) of the cycle a token sequence ends in, or None.

    The period is the smallest p such that the sequence's tail repeats with period p for at least
    ``min_repeats`` whole periods (and at least p + 1 tokens); ``start`` is the first index from
    which the sequence is periodic with that period up to its end. A fixed token is period 1.
    """
    seq = [int(v) for v in ids]
    n = len(seq)
    top = max_period if max_period is not None else n // max(min_repeats, 1)
    for p in range(1, top + 1):
        if p * min_repeats > n:
            break
        start = n - p
        while start > 0 and seq[start - 1] == seq[start - 1 + p]:
            start -= 1
        if n - start >= max(p * min_repeats, p + 1):
            return start, p
    return None


def follows_cycle(ids, cycle: list[int], length: int) -> bool:
    """Whether the last ``length`` tokens of ``ids`` run along ``cycle`` (in any phase)."""
    tail = [int(v) for v in ids][-length:]
    if len(tail) < length or not cycle:
        return False
    p = len(cycle)
    phases = [i for i, v in enumerate(cycle) if v == tail[0]]
    return any(all(tail[j] == cycle[(ph + j) % p] for j in range(length)) for ph in phases)


@dataclass
class DriftAttractor:
    """Where the drift alone leads from a prompt.

    ``kind``: "cycle" or "none" (no repeat within ``tokens`` tokens; "fixed token", a period of one,
    cannot occur from the sampler, which never emits a token twice in a row); ``start``:
    the step (0 = the first continued token) from which the drift-only text repeats, ``period``
    and ``cycle`` (its tokens) and ``cycle_ids``; ``drift_text``: the drift-only tokens. The escape
    scan: at each diffusion scale ``scales[i]``, the share ``escaped[i]`` of ``paths`` paths (one
    seed) whose text no longer settles into a loop (:func:`find_cycle` finds none in it; a path
    that stopped, having left the vocabulary's cloud, counts as escaped) and the
    share ``same_cycle[i]`` still running along the drift's own cycle at the end; ``escape_scale``:
    the smallest scale from which on at least half of the paths escape at every scale of the grid
    (None when the largest does not)."""

    kind: str
    start: int | None
    period: int | None
    cycle: list[str]
    cycle_ids: list[int]
    drift_text: list[str]
    tokens: int
    scales: list[float] = field(default_factory=list)
    escaped: list[float] = field(default_factory=list)
    same_cycle: list[float] = field(default_factory=list)
    escape_scale: float | None = None


ESCAPE_SCALES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


@torch.no_grad()
def drift_attractor(model: TextSDE, embedder: Embedder, prompt: str, *, tokens: int = 128, paths: int = 8,
                    seed: int = 0, scales=ESCAPE_SCALES, refine: int = 2, substeps: int = 1) -> DriftAttractor:
    """The drift-only text's cycle (:func:`find_cycle`) and the scan of scales that escape it.

    The scales are run together (one batch, the same Brownian path at each); the bracket [the grid
    scale below, the smallest grid scale from which on every one escapes] is then halved ``refine``
    times."""
    check_prompt(embedder, prompt)
    base = simulate_requests(model, embedder, [SampleRequest(prompt, paths=1, tokens=tokens, diffusion_scale=0.0,
                                                             substeps=substeps)])[0]
    ids = base.continuation(0)
    found = find_cycle(ids)
    drift_text = embedder.tokens(ids)
    if found is None:
        return DriftAttractor(kind="none", start=None, period=None, cycle=[], cycle_ids=[], drift_text=drift_text,
                              tokens=tokens)
    start, period = found
    cycle_ids = ids[start:start + period]
    window = max(2 * period, 8)

    def scan(batch: list[float]) -> list[tuple[float, float]]:
        reqs = [SampleRequest(prompt, paths=paths, tokens=tokens, diffusion_scale=float(s), seed=seed,
                              substeps=substeps) for s in batch]
        out = []
        for r in simulate_requests(model, embedder, reqs):
            conts = [r.continuation(i) for i in range(paths)]
            out.append((float(np.mean([find_cycle(c) is None for c in conts])),
                        float(np.mean([follows_cycle(c, cycle_ids, window) for c in conts]))))
        return out

    grid = sorted(float(s) for s in scales)
    tried = dict(zip(grid, scan(grid)))
    # the smallest grid scale from which on every scale tried escapes: one lucky seed at a small s
    # (a path knocked into a stretch that happens not to loop) does not count
    first = next((s for i, s in enumerate(grid) if all(tried[g][0] >= 0.5 for g in grid[i:])), None)
    escape = None
    if first is not None:
        below = [s for s in grid if s < first]
        lo, hi = (below[-1] if below else 0.0), first
        for _ in range(refine):
            mid = round((lo + hi) / 2, 6)
            tried[mid] = scan([mid])[0]
            lo, hi = (mid, hi) if tried[mid][0] < 0.5 else (lo, mid)
        escape = hi
    pts = sorted(tried)
    return DriftAttractor(kind="fixed token" if period == 1 else "cycle", start=start, period=period,
                          cycle=embedder.tokens(cycle_ids), cycle_ids=cycle_ids, drift_text=drift_text, tokens=tokens,
                          scales=pts, escaped=[tried[s][0] for s in pts], same_cycle=[tried[s][1] for s in pts],
                          escape_scale=escape)


# ----------------------------------------------------------------------------- same noise, several scales
def departures(token_ids: np.ndarray, drift_ids) -> np.ndarray:
    """Per path, the first step at which its tokens differ from the drift-only tokens, or -1 when
    they never do within the run. token_ids: (paths, steps), -1 after a path stopped (a stopped
    path leaves at its first missing token); drift_ids: (steps,) or shorter."""
    ids = np.asarray(token_ids)
    ref = np.full(ids.shape[1], -2, dtype=np.int64)
    d = np.asarray(drift_ids, dtype=np.int64)[: ids.shape[1]]
    ref[: len(d)] = d
    differ = ids != ref[None, :]
    first = differ.argmax(axis=1)
    return np.where(differ.any(axis=1), first, -1)


def left_share(first: np.ndarray, steps: int) -> np.ndarray:
    """Share of paths that have left the drift-only text by each step k (first departure <= k): (steps,)."""
    f = np.asarray(first)
    k = np.arange(steps)
    return ((f[:, None] >= 0) & (f[:, None] <= k[None, :])).mean(axis=0) if len(f) else np.zeros(steps)


@dataclass
class ScaleComparison:
    """Runs at several diffusion scales on one seed, against the drift-only run: ``runs[i]`` at
    ``scales[i]``; ``first[i]`` (paths,) each path's first departure (:func:`departures`);
    ``share[i]`` (tokens,) the share of paths that have left by each step; ``drift``: the run at 0."""

    scales: list[float]
    drift: Paths
    runs: list[Paths]
    first: list[np.ndarray]
    share: list[np.ndarray]


def scale_requests(prompt: str, scales, *, paths: int = 8, tokens: int = 24, seed: int = 0, substeps: int = 1,
                   snap: bool = True) -> list[SampleRequest]:
    """The runs of :func:`compare_scales`: the drift-only run, then one per scale on ``seed``."""
    reqs = [SampleRequest(prompt, paths=1, tokens=tokens, diffusion_scale=0.0, substeps=substeps, snap=snap)]
    return reqs + [SampleRequest(prompt, paths=paths, tokens=tokens, diffusion_scale=float(s), seed=seed,
                                 substeps=substeps, snap=snap) for s in scales]


def comparison(results: list[Paths]) -> ScaleComparison:
    """:class:`ScaleComparison` of the results of :func:`scale_requests`' runs, in order."""
    drift, *runs = results
    ref = drift.token_ids[0].numpy()
    first = [departures(r.token_ids.numpy(), ref) for r in runs]
    steps = drift.token_ids.shape[1]
    return ScaleComparison(scales=[r.diffusion_scale for r in runs], drift=drift, runs=runs, first=first,
                           share=[left_share(f, steps) for f in first])


@torch.no_grad()
def compare_scales(model: TextSDE, embedder: Embedder, prompt: str, scales, **settings) -> ScaleComparison:
    """The same prompt and seed at each scale (the same Brownian path bent by each s), in one batch
    with the drift-only run; ``settings`` are :func:`scale_requests`' (paths, tokens, seed, substeps,
    snap)."""
    return comparison(simulate_requests(model, embedder, scale_requests(prompt, scales, **settings)))
