"""Sample paths of the text SDE from a prompt, and their decoded text (docs/design.md §3).

Each new token is one SDE step of length dt, integrated with ``substeps`` solver steps:
``em`` (the engine's own Euler-Maruyama loop) or ``euler``, ``milstein``, ``srk`` through
``torchsde.sdeint``. All solvers read one seeded ``torchsde.BrownianInterval`` per run,
queried on the same grid, so a seed fixes the Brownian path for every diffusion scale and
every solver: moving the scale bends one path instead of drawing another.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torchsde

from .embedding import Embedder
from .limits import MAX_PROMPT_TOKENS, SOLVERS, check_choice, check_limit, check_seed, check_temperature
from .model import ScaledSDE, TextSDE

log = logging.getLogger(__name__)


@dataclass
class Paths:
    """Sample paths from one prompt.

    token_ids: (paths, steps) generated ids, -1 after a path diverged;
    probs: (paths, steps) emission probability of each decoded token;
    states: (paths, steps + 1, dim) continuous x at the prompt's last token and after
    each token step (before snapping), NaN after divergence; None unless recorded;
    drift: (paths, steps + 1, dim) mu and sigma2: (paths, steps + 1) sum_d sigma_d^2 (before
    the diffusion scale), both evaluated at ``states`` with their memory ``memory``
    (paths, steps + 1, K * dim); None unless recorded;
    times: (steps + 1,); diverged: (paths,) bool; diverged_at: (paths,) step index or -1;
    diffusion_scale: the s the paths were simulated at.
    """

    prompt_ids: list[int]
    token_ids: torch.Tensor
    probs: torch.Tensor
    times: torch.Tensor
    diverged: torch.Tensor
    diverged_at: torch.Tensor
    diffusion_scale: float = 1.0
    states: torch.Tensor | None = None
    drift: torch.Tensor | None = None
    sigma2: torch.Tensor | None = None
    memory: torch.Tensor | None = None

    def continuation(self, i: int) -> list[int]:
        ids = self.token_ids[i]
        return [int(v) for v in ids[ids >= 0]]


def check_prompt(embedder: Embedder, prompt: str) -> list[int]:
    """Token ids of a prompt, cut to its last MAX_PROMPT_TOKENS tokens (with a warning)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty; give some text, e.g. --prompt \"How can I improve my sleep?\"")
    ids = embedder.encode(prompt)
    if not ids:
        raise ValueError("the prompt has no known tokens; give some words the tokenizer knows")
    if len(ids) > MAX_PROMPT_TOKENS:
        log.warning("the prompt has %d tokens; only its last %d are read", len(ids), MAX_PROMPT_TOKENS)
        ids = ids[-MAX_PROMPT_TOKENS:]
    return ids


class StateNoise(torchsde.BaseBrownian):
    """A Brownian path that drives only the first ``noisy`` coordinates of a state of size
    ``state_dim``: increments (and Levy areas) are drawn for those alone and padded with zeros,
    since the memory has no noise (``g = 0`` there). torchsde's solvers take it like any
    Brownian path of shape (paths, state_dim); drawing 384 of the 2,688 coordinates is seven
    times less noise to generate and to cache."""

    def __init__(self, inner: torchsde.BrownianInterval, state_dim: int):
        super().__init__()
        self.inner, self.state_dim = inner, state_dim

    def _pad(self, a: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(a, (0, self.state_dim - a.shape[-1]))

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        out = self.inner(ta, tb, return_U=return_U, return_A=return_A)
        return tuple(self._pad(a) for a in out) if isinstance(out, tuple) else self._pad(out)

    def __repr__(self) -> str:
        return f"StateNoise({self.inner!r}, state_dim={self.state_dim})"

    @property
    def dtype(self):
        return self.inner.dtype

    @property
    def device(self):
        return self.inner.device

    @property
    def shape(self):
        return (*self.inner.shape[:-1], self.state_dim)

    @property
    def levy_area_approximation(self):
        return self.inner.levy_area_approximation


def brownian_path(t0: float, t1: float, paths: int, noise_dim: int, step: float, seed: int,
                  device: torch.device, dtype=torch.float32, state_dim: int | None = None):
    """The run's one Brownian path, of ``noise_dim`` coordinates (padded with zeros to
    ``state_dim`` when given, :class:`StateNoise`). ``dt`` is set (torchsde is tens of times
    slower without it) and the space-time Levy area is always drawn, so the increments W are
    the same for ``srk`` (which needs the area) and for every other solver."""
    bm = torchsde.BrownianInterval(t0=t0, t1=t1, size=(paths, noise_dim), dtype=dtype, device=device,
                                   entropy=seed, dt=step, levy_area_approximation="space-time")
    return bm if state_dim is None or state_dim == noise_dim else StateNoise(bm, state_dim)


def solver_grid(t0: torch.Tensor, t1: torch.Tensor, step: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (start, end) of each fixed step torchsde takes from t0 to t1 (its own rule:
    ``next = min(t + step, t1)``), so ``em`` queries the Brownian path exactly as
    ``sdeint`` does."""
    grid, t = [], t0
    while t < t1:
        nxt = torch.minimum(t + step, t1)
        grid.append((t, nxt))
        t = nxt
    return grid


def em_step(sde, y: torch.Tensor, grid, bm) -> torch.Tensor:
    """Euler-Maruyama over ``grid``: y <- y + f dt + g dW, one evaluation of the nets per
    step where the SDE offers ``f_and_g`` (as torchsde's own ``euler`` uses it), ``f`` and
    ``g`` otherwise; the increments are read from ``bm`` in one batch up front."""
    if isinstance(sde, ScaledSDE) and isinstance(bm, StateNoise):
        return _em_text(sde, y, grid, bm.inner)
    f_and_g = getattr(sde, "f_and_g", None) or (lambda t, y: (sde.f(t, y), sde.g(t, y)))
    dws = [bm(a, b) for a, b in grid]
    for (a, b), dw in zip(grid, dws):
        f, g = f_and_g(a, y)
        y = y + f * (b - a) + g * dw
    return y


def _em_text(sde: ScaledSDE, y: torch.Tensor, grid, bm: torchsde.BrownianInterval) -> torch.Tensor:
    """:func:`em_step` for the text SDE, the noisy x and the noiseless memory updated apart:
    the same arithmetic as ``y + f dt + g dW`` on the whole state (the memory's ``g dW`` is an
    exact zero), without building the padded noise or the memory's zero diffusion."""
    model = sde.model
    dws = [bm(a, b) for a, b in grid]  # (paths, dim): the x coordinates only
    for (a, b), dw in zip(grid, dws):
        x, h = model.split(y)
        mu, sigma = model.drift_and_sigma(x, h, a)
        dt = b - a
        y = torch.cat([x + mu * dt + (sde.scale * sigma) * dw, h + model.memory_rate(x, h) * dt], dim=-1)
    return y


@torch.no_grad()
def simulate_paths(
    model: TextSDE,
    embedder: Embedder,
    prompt: str,
    *,
    paths: int = 8,
    tokens: int = 32,
    diffusion_scale: float = 1.0,
    solver: str = "em",
    substeps: int = 1,
    seed: int = 0,
    snap: bool = True,
    temperature: float = 0.0,
    record_states: bool = False,
    progress: bool = False,
) -> Paths:
    """Generate ``paths`` continuations of ``prompt``, ``tokens`` tokens each.

    The prompt is read through the memory (teacher forcing) to give the start state;
    each token is one SDE step of length dt; after it the token the emission decodes at
    the new x is recorded and, with ``snap``, x is set to that token's embedding. A path
    whose x becomes non-finite or leaves the ball of ``divergence_radius`` times the
    vocabulary cloud's radius is stopped and flagged; the others go on. With ``progress``, a
    bar on stderr counts the tokens of a run that lasts more than two seconds, when stderr is
    a terminal.
    """
    paths, tokens = check_limit("paths", paths), check_limit("tokens", tokens)
    diffusion_scale, substeps = check_limit("diffusion_scale", diffusion_scale), check_limit("substeps", substeps)
    solver, seed = check_choice(solver, SOLVERS, "--solver"), check_seed(seed)
    temperature = check_temperature(temperature)
    prompt_ids = check_prompt(embedder, prompt)

    if model.training:
        model.eval()
    dev = model.emb_mean.device
    cfg = model.config
    d = cfg.dim
    y = model.prompt_state(prompt_ids).expand(paths, -1).clone()
    t_start = (len(prompt_ids) - 1) * cfg.dt
    times = torch.tensor([t_start + k * cfg.dt for k in range(tokens + 1)], dtype=torch.float32, device=dev)
    step = cfg.dt / substeps
    bm = brownian_path(float(times[0]), float(times[-1]), paths, d, step, seed, dev, state_dim=cfg.state_dim)
    gen = torch.Generator(device=dev).manual_seed(seed)
    bound = cfg.divergence_radius * float(model.cloud_radius)

    ids_out = torch.full((paths, tokens), -1, dtype=torch.long, device=dev)
    probs_out = torch.zeros(paths, tokens, device=dev)
    rec = None
    if record_states:  # x and h after each step; mu and sigma^2 at them come after the loop
        rec = {"states": torch.full((paths, tokens + 1, d), math.nan, device=dev),
               "memory": torch.full((paths, tokens + 1, cfg.memory_dim), math.nan, device=dev)}
        rec["states"][:, 0], rec["memory"][:, 0] = model.split(y)
    alive = torch.ones(paths, dtype=torch.bool, device=dev)
    all_alive = True  # until a path stops: the common case skips the masked updates
    last = torch.full((paths,), prompt_ids[-1], dtype=torch.long, device=dev)
    diverged_at = torch.full((paths,), -1, dtype=torch.long, device=dev)

    sde = ScaledSDE(model, diffusion_scale)
    from tqdm.auto import tqdm

    steps = tqdm(range(tokens), desc="tokens", unit="tok", leave=False, delay=2.0,
                 disable=None if progress else True)  # None: only on a terminal
    for k in steps:
        t0, t1 = times[k], times[k + 1]
        if solver == "em":
            y_new = em_step(sde, y, solver_grid(t0, t1, step), bm)
        else:
            y_new = _sdeint_step(sde, y, t0, t1, bm, solver, step)
        x = y_new[:, :d]
        ok = torch.isfinite(y_new).all(-1) & (x.norm(dim=-1) <= bound)
        if all_alive and bool(ok.all()):
            # A token never follows itself here: real text almost never does (0.06% of HelpSteer's
            # pairs), while a greedy read-out of a settled path would repeat one token for ever.
            v, p = model.emission.decode(x, temperature, gen, exclude=last)
            last, ids_out[:, k], probs_out[:, k] = v, v, p
            if rec is not None:
                rec["states"][:, k + 1], rec["memory"][:, k + 1] = model.split(y_new)
            y = y_new
            if snap:
                y[:, :d] = model.token_states(v)
            continue
        all_alive = False
        newly = alive & ~ok
        diverged_at[newly] = k
        alive &= ok
        if not alive.any():
            break
        y = torch.where(alive[:, None], y_new, y)  # stopped paths keep their last sane state
        v, p = model.emission.decode(x[alive], temperature, gen, exclude=last[alive])
        last[alive] = v
        ids_out[alive, k], probs_out[alive, k] = v, p
        if rec is not None:
            rec["states"][alive, k + 1], rec["memory"][alive, k + 1] = model.split(y_new[alive])
        if snap:
            y[alive, :d] = model.token_states(v)
    steps.close()
    recorded = {}
    if rec is not None:
        rec["drift"], rec["sigma2"] = _nets_at(model, rec["states"], rec["memory"], times)
        recorded = {k: v.cpu() for k, v in rec.items()}
    return Paths(prompt_ids=prompt_ids, token_ids=ids_out.cpu(), probs=probs_out.cpu(), times=times.cpu(),
                 diverged=(diverged_at >= 0).cpu(), diverged_at=diverged_at.cpu(),
                 diffusion_scale=float(diffusion_scale), **recorded)


def _nets_at(model: TextSDE, states: torch.Tensor, memory: torch.Tensor, times: torch.Tensor,
             chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """mu(x, h, t) (paths, steps + 1, dim) and sum_d sigma_d^2(x, h, t) (paths, steps + 1) at
    recorded states, NaN where a path had stopped: one batched evaluation of the nets after the
    run, ``chunk`` rows at a time, instead of a small one per step."""
    n_paths, n_times, d = states.shape
    x, h = states.reshape(-1, d), memory.reshape(n_paths * n_times, -1)
    t = times.repeat(n_paths)
    drift = torch.full_like(x, math.nan)
    sigma2 = torch.full((x.shape[0],), math.nan, device=x.device)
    rows = torch.isfinite(x).all(-1).nonzero().squeeze(-1)
    for start in range(0, rows.numel(), chunk):
        r = rows[start:start + chunk]
        mu, sig = model.drift_and_sigma(x[r], h[r], t[r])
        drift[r], sigma2[r] = mu, sig.pow(2).sum(-1)
    return drift.reshape(n_paths, n_times, d), sigma2.reshape(n_paths, n_times)


def _sdeint_step(sde: ScaledSDE, y, t0, t1, bm, solver: str, step: float) -> torch.Tensor:
    ts = torch.stack([t0, t1])
    if solver == "milstein":
        # Milstein needs d(sigma)/dy, which torchsde takes by autograd.
        with torch.enable_grad():
            return torchsde.sdeint(sde, y, ts, bm=bm, method=solver, dt=step)[-1].detach()
    return torchsde.sdeint(sde, y, ts, bm=bm, method=solver, dt=step)[-1]


def path_texts(embedder: Embedder, result: Paths) -> list[dict]:
    """Per path: the continuation's text, its WordPiece tokens and the divergence flag."""
    out = []
    for i in range(result.token_ids.shape[0]):
        ids = result.continuation(i)
        out.append({"text": embedder.decode(ids), "tokens": embedder.tokens(ids),
                    "diverged": bool(result.diverged[i])})
    return out
