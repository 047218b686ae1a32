"""Drift, diffusion and memory as one torchsde-compatible SDE (docs/design.md §2).

The state is ``y = [x, h]`` with ``x`` the standardised embedding of the current token
and ``h = [h_1, ..., h_K]`` exponential moving averages of ``x`` at fixed time scales:

    dx  = mu(x, h, t) dt + s * sigma(x, h, t) dW        (diagonal noise)
    dh_j = (x - h_j) / tau_j dt                         (no noise)

The drift is mean-reverting by construction, ``mu = m(z) - gamma * x`` with
``z = c tanh([x, h, t] / c)``, ``m`` an MLP and ``gamma > 0`` a learned per-dimension rate;
``sigma = softplus(MLP(z))``. Both nets see bounded inputs, so ``m`` and ``sigma`` are
bounded and ``LV = 2 x.mu + s^2 |sigma|^2 <= -2 gamma_min |x|^2 + O(|x|) + O(s^2)``:
unsnapped paths stay in a ball whose size grows with ``s``, the Lyapunov picture the
analysis measures. ``s`` enters through :class:`ScaledSDE`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import losses, onednn
from .config import ModelConfig
from .embedding import Embedder
from .emission import GaussianEmission

_TIME_NORM = math.log1p(512)


def _mlp(n_in: int, hidden: int, n_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.SiLU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.SiLU(), nn.Dropout(dropout),
        nn.Linear(hidden, n_out),
    )


class TextSDE(nn.Module):
    """The text SDE: ``f``/``g`` follow torchsde's interface (``y`` of shape (batch, state_dim))."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, config: ModelConfig, embedder: Embedder, log_prior: torch.Tensor | None = None):
        super().__init__()
        if config.dim != embedder.dim:
            raise ValueError(f"model dim {config.dim} does not match embedder {embedder.name!r} dim {embedder.dim}")
        self.config = config.validate()
        support = embedder.support_mask
        raw = embedder.table
        # Standardise per dimension over the emittable vocabulary: derived from the
        # embedder (checked by fingerprint), so not stored in the checkpoint.
        mean, std = raw[support].mean(0), raw[support].std(0).clamp_min(1e-6)
        table = (raw - mean) / std
        self.register_buffer("emb_mean", mean, persistent=False)
        self.register_buffer("emb_std", std, persistent=False)
        radius = table[support].norm(dim=-1).quantile(0.99)
        self.register_buffer("cloud_radius", radius, persistent=False)
        rates = torch.tensor([config.dt / tau for tau in config.memory_timescales])
        self.register_buffer("memory_rates", rates, persistent=False)
        # the memory's weights r a^lag per time scale, up to each scale's reach (window_states)
        lags = torch.arange(max(self.memory_reach()), dtype=torch.float64)
        r64 = rates.double()[:, None]
        self.register_buffer("memory_weights", (r64 * (1 - r64).pow(lags)).float(), persistent=False)
        self.emission = GaussianEmission(table, support, log_prior, config.tau_init)

        n_in = config.dim + config.memory_dim + 1
        # gamma = softplus(rho), started at 1/dt: one step then forgets x and predicts m.
        self.reversion = nn.Parameter(torch.full((config.dim,), math.log(math.expm1(1.0 / config.dt))))
        self.drift_net = _mlp(n_in, config.drift_hidden, config.dim, config.dropout)
        self.diffusion_net = _mlp(n_in, config.diffusion_hidden, config.dim, config.dropout)
        # The read-out's shift r(z): the emission reads the predicted state x + mu dt + r (§2.4).
        self.readout_net = (_mlp(n_in, config.readout_hidden, config.dim, config.dropout)
                            if config.readout_hidden else None)
        with torch.no_grad():
            if self.readout_net is not None:  # started at r = 0: the emission reads x + mu dt
                self.readout_net[-1].weight.zero_()
                self.readout_net[-1].bias.zero_()
            self.drift_net[-1].weight.mul_(0.1)
            self.drift_net[-1].bias.zero_()
            # softplus(0.5413) = 1: start sigma near one standardised unit per sqrt(dt).
            self.diffusion_net[-1].weight.mul_(0.1)
            self.diffusion_net[-1].bias.fill_(0.5413)

    # ------------------------------------------------------------------ helpers
    @property
    def dim(self) -> int:
        return self.config.dim

    def token_states(self, ids: torch.Tensor) -> torch.Tensor:
        """Standardised embeddings of token ids: (...,) -> (..., dim)."""
        return self.emission.table[ids]

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return y[..., : self.dim], y[..., self.dim :]

    def _features(self, x: torch.Tensor, h: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        tf = torch.log1p(t.clamp_min(0) / self.config.dt) / _TIME_NORM
        tf = tf.expand(x.shape[0]).unsqueeze(-1) if tf.ndim == 0 else tf.reshape(-1, 1)
        c = self.config.input_clip
        z = torch.cat([x, h, tf], dim=-1)
        if torch.is_grad_enabled():
            return c * torch.tanh(z / c)
        return z.div_(c).tanh_().mul_(c)  # the same values, in the one buffer

    @property
    def gamma(self) -> torch.Tensor:
        """The drift's mean-reversion rate per dimension, (dim,)."""
        return F.softplus(self.reversion)

    def drift(self, x: torch.Tensor, h: torch.Tensor, t) -> torch.Tensor:
        """mu(x, h, t) = m(z) - gamma * x: (batch, dim), float32 (also under bf16 autocast)."""
        return self._mu(self._features(x, h, t), x)

    def sigma(self, x: torch.Tensor, h: torch.Tensor, t) -> torch.Tensor:
        """sigma(x, h, t) > 0: (batch, dim), before the diffusion scale; float32."""
        return self._sigma(self._features(x, h, t))

    def drift_and_sigma(self, x: torch.Tensor, h: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """``drift`` and ``sigma`` at once, their shared bounded input computed once."""
        z = self._features(x, h, t)
        return self._mu(z, x), self._sigma(z)

    @property
    def has_readout(self) -> bool:
        return self.readout_net is not None

    def readout_shift(self, z: torch.Tensor) -> torch.Tensor | None:
        """The read-out's shift r(z) at the nets' bounded input ``z`` (batch, dim), float32; None for
        a model without a read-out (docs/design.md §2.4)."""
        return None if self.readout_net is None else self._net("readout_net", z).float()

    def read_mean(self, x: torch.Tensor, mu: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
        """Where the emission reads the next token after one noiseless step: ``x + mu dt``, plus the
        read-out's shift when the model has one."""
        mean = x + mu * self.config.dt
        return mean if shift is None else mean + shift

    def next_token_mean(self, x: torch.Tensor, h: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The drift, sigma and the read-out's mean at ``(x, h, t)``: the emission's next-token
        distribution is ``emission.next_token_logits(mean, sigma^2 dt)`` (docs/design.md §2.4)."""
        z = self._features(x, h, t)
        mu = self._mu(z, x)
        return mu, self._sigma(z), self.read_mean(x, mu, self.readout_shift(z))

    def _mu(self, z: torch.Tensor | None, x: torch.Tensor, net_out: torch.Tensor | None = None) -> torch.Tensor:
        """mu from the bounded input ``z``, or from the drift net's output at it when given."""
        out = self._net("drift_net", z) if net_out is None else net_out
        return out.float() - self.gamma * x

    def _sigma(self, z: torch.Tensor | None, net_out: torch.Tensor | None = None) -> torch.Tensor:
        """sigma from the bounded input ``z``, or from the diffusion net's output at it when given."""
        out = self._net("diffusion_net", z) if net_out is None else net_out
        return F.softplus(out.float()) + self.config.sigma_min

    def _net(self, name: str, z: torch.Tensor) -> torch.Tensor:
        """The MLP ``name`` at ``z``. For inference (eval mode, no gradients) its layers run as
        plain functions, without the modules' call overhead, and on a CPU (float32, two rows or
        more) through oneDNN with prepacked weights and the SiLU fused (:mod:`sdecore.onednn`): at
        a few rows, as when sampling, torch's default product repacks each weight on every call.
        The same values as ``net(z)`` (the packed product to float rounding). The packs are kept
        until a parameter changes (their version counters, as for the emission's cached bias,
        docs/design.md §3)."""
        net = getattr(self, name)
        if self.training or torch.is_grad_enabled():
            return net(z)
        layers, packed = self._inference_layers(name, net)
        if layers is None:
            return net(z)
        if packed is not None and z.shape[0] > 1 and onednn.usable(z):  # one row: the plain product is as fast
            for weight, bias, activation in packed:
                z = onednn.linear(z, weight, bias, activation)
            return z
        for weight, bias, activation in layers:
            z = F.linear(z, weight, bias)
            if activation == "swish":
                z = F.silu(z)
        return z

    def batches_exactly(self) -> bool:
        """Whether a row's inference products give the same values in any batch of two rows or
        more, so that runs may share them (:func:`sdecore.simulate.simulate_requests`): true where
        the oneDNN-packed kernels run (a float32 CPU model, oneDNN present and its packs of the
        table and of both nets accepted); torch's default kernels round a row differently
        depending on the batch."""
        table = self.emission.table
        if not onednn.usable(table) or self.emission._packed("table", table[:2]) is None:
            return False
        return all(self._inference_layers(name, getattr(self, name))[1] is not None for name in self.net_names())

    def net_names(self) -> tuple[str, ...]:
        """The MLPs a step evaluates: the drift's, the diffusion's and the read-out's, if any."""
        return ("drift_net", "diffusion_net") + (("readout_net",) if self.readout_net is not None else ())

    def _inference_layers(self, name: str, net: nn.Sequential) -> tuple[list | None, list | None]:
        """(weight, bias, activation) per linear layer of ``net``, and the same with oneDNN-packed
        weights (None where oneDNN declines), kept until a parameter changes."""
        cache = self.__dict__.setdefault("_inference_nets", {})
        entry = cache.get(name)
        params = entry[0] if entry is not None else list(net.parameters())
        key = tuple((p._version, p.data_ptr()) for p in params)
        if entry is None or entry[1] != key:
            layers = _mlp_layers(net)
            entry = cache[name] = (params, key, layers, _pack_layers(layers) if layers is not None else None)
        return entry[2], entry[3]

    def memory_rate(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """dh/dt = (x - h_j) / tau_j for every time scale j: (batch, K * dim)."""
        hk = h.reshape(h.shape[0], -1, self.dim)
        diff = x.unsqueeze(1) - hk
        rates = (self.memory_rates / self.config.dt)[None, :, None]
        return (diff * rates if torch.is_grad_enabled() else diff.mul_(rates)).reshape(h.shape)

    # --------------------------------------------------------------- torchsde API
    def f(self, t, y: torch.Tensor) -> torch.Tensor:
        x, h = self.split(y)
        return torch.cat([self.drift(x, h, t), self.memory_rate(x, h)], dim=-1)

    def g(self, t, y: torch.Tensor) -> torch.Tensor:
        """Diffusion at scale s = 1; :class:`ScaledSDE` gives any other scale."""
        x, h = self.split(y)
        return torch.cat([self.sigma(x, h, t), torch.zeros_like(h)], dim=-1)

    # ---------------------------------------------------------- teacher forcing
    def teacher_forced_memory(self, xs: torch.Tensor) -> torch.Tensor:
        """Memory along token sequences read with teacher forcing.

        xs: (batch, length, dim) standardised embeddings. Returns h of shape
        (batch, length, K * dim), where h[:, k] summarises x[:, :k] by one Euler step of
        length dt per token, h_{k+1} = h_k + (dt / tau_j) (x_k - h_k), from h_0 = 0 (the
        vocabulary mean). This is the update an Euler-Maruyama step of the SDE makes.
        """
        from scipy.signal import lfilter  # here, not at import: scipy.signal takes a second to load

        b, length, d = xs.shape
        # h_{k+1} = (1 - r) h_k + r x_k is a first-order linear filter along time; scipy's
        # lfilter runs it in C (the same recurrence, not an approximation).
        x_np = xs.detach().cpu().double().numpy()
        hs = [lfilter([0.0, r], [1.0, r - 1.0], x_np, axis=1) for r in self.memory_rates.tolist()]
        out = torch.from_numpy(np.stack(hs, axis=2).reshape(b, length, -1)).to(xs.dtype)
        return out.to(xs.device)

    def memory_reach(self, tolerance: float = 1e-8) -> list[int]:
        """Per memory time scale, how many past tokens the memory at a position reads before the
        weights ``r a^lag`` fall below ``tolerance * r`` (below float32 resolution by default):
        1 at ``tau = dt``, about 1,180 at ``tau = 64 dt``."""
        out = []
        for r in self.memory_rates.tolist():
            a = 1.0 - r
            out.append(1 if a <= 0 else max(1, math.ceil(math.log(tolerance) / math.log(a)) + 1))
        return out

    def window_states(self, prefix_ids: torch.Tensor, prefix_lag: torch.Tensor, bag_offsets: torch.Tensor,
                      window_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """States and teacher-forced memory of windows of token sequences, built from ids alone.

        Window w covers positions ``k0_w .. k0_w + width`` of its sequence: ``window_ids``
        (w, width + 1) are their ids (ids past a sequence's end may be any valid id). The memory
        at ``k0_w`` for time scale k reads the bag ``bag_offsets[k * w_count + w]`` of the flat
        ``prefix_ids`` (P,), positions j before ``k0_w`` with ``prefix_lag = k0_w - 1 - j``, as
        far back as :meth:`memory_reach` says matters (see ``sdecore.tokendata.window_batch``).
        Returns ``xs`` (w, width + 1, dim), the states of the window's positions, and ``h``
        (w, width, K * dim), the memory at its first ``width`` positions: equal to
        :meth:`teacher_forced_memory` there to float32 rounding. The linear recurrence is
        unrolled, ``h_k = sum_{j<k} r a^(k-1-j) x_j`` with ``r = dt/tau``, ``a = 1 - r``: the
        memory at ``k0`` is a weighted bag of the prefix's embeddings read straight from the
        table (no prefix state is materialised, no padding), the rest a small lower-triangular
        (Toeplitz) product inside the window; no loop over time. Positions past a sequence's
        end get meaningless values, to be masked by the caller.
        """
        table = self.emission.table
        dev, dtype = table.device, table.dtype
        rate = self.memory_rates.to(dev, dtype)  # (K,)
        decay = 1.0 - rate
        n_k, w = rate.numel(), window_ids.shape[0]
        # each entry's weight r a^lag, read from the table of its bag's scale (bags are scale-major)
        sizes = torch.diff(bag_offsets, append=bag_offsets.new_tensor([prefix_ids.numel()]))
        row = torch.arange(n_k, device=dev).repeat_interleave(w) * self.memory_weights.shape[1]
        weights = self.memory_weights.reshape(-1)[
            torch.repeat_interleave(row, sizes, output_size=prefix_ids.numel()) + prefix_lag]
        h0 = F.embedding_bag(prefix_ids, table, bag_offsets, mode="sum", per_sample_weights=weights)
        h0 = h0.reshape(n_k, w, -1).transpose(0, 1)  # (w, K, dim)
        # the window's states, and inside it h_{k0+i} = a^i h_{k0} + sum_{m<i} r a^(i-1-m) x_{k0+m}
        xs = table[window_ids]  # (w, width + 1, dim)
        i = torch.arange(window_ids.shape[1] - 1, device=dev)
        inner = i[:, None] - 1 - i[None, :]  # (width, width)
        toeplitz = rate[:, None, None] * decay[:, None, None].pow(inner.clamp_min(0).to(dtype)) * (inner >= 0)
        carry = decay[None, :].pow(i[:, None].to(dtype))  # (width, K)
        h = torch.einsum("kim,wmd->wikd", toeplitz, xs[:, :-1]) + carry[None, :, :, None] * h0[:, None, :, :]
        return xs, h.reshape(w, i.numel(), -1)

    def prompt_state(self, ids: list[int]) -> torch.Tensor:
        """State y at the prompt's last token, reading the prompt through the memory: (1, state_dim).

        The memory there is the teacher-forced one (:meth:`teacher_forced_memory`) at the last
        position, taken directly as its unrolled sum ``h = sum_{j<L-1} r a^(L-2-j) x_j`` in float64
        (docs/design.md §2.1): one weighted sum per time scale instead of the whole filter."""
        ids_t = torch.as_tensor(ids, dtype=torch.long, device=self.emb_mean.device)
        xs = self.token_states(ids_t)  # (L, dim)
        rate = self.memory_rates.to(xs.device, torch.float64)[:, None]  # (K, 1)
        lag = torch.arange(xs.shape[0] - 2, -1, -1, device=xs.device, dtype=torch.float64)  # L-2-j, j < L-1
        h = (rate * (1.0 - rate).pow(lag)) @ xs[:-1].double()  # (K, dim)
        return torch.cat([xs[-1], h.reshape(-1).to(xs.dtype)])[None]

    # ------------------------------------------------------------------- losses
    def forward(self, x, h, t, x_next, v_next, ce_mask=None, x_start=None, ce_trains_drift: bool = False
                ) -> dict[str, torch.Tensor]:
        """Per-batch losses on transitions ``(x, h, t) -> (x_next, v_next)``.

        x, x_next: (batch, dim); h: (batch, K * dim); t: (batch,); v_next: (batch,) token ids;
        ce_mask: (batch,) bool, the positions that enter the cross-entropy (all if None);
        x_start: (batch, dim) optional start states for the drift and diffusion losses
        (x perturbed off the token embeddings); the cross-entropy always starts from x.
        With a read-out the cross-entropy's gradient does not reach the drift unless
        ``ce_trains_drift`` (an ablation, docs/design.md §2.5); without one it always does.
        Returns ``drift``, ``diffusion``, ``ce`` (nats per token) as scalars.
        """
        dt = self.config.dt
        z = self._features(x, h, t)
        mu, sig = self._mu(z, x), self._sigma(z)
        if x_start is None:
            xs, mu_s, sig_s = x, mu, sig
        else:
            xs, (mu_s, sig_s) = x_start, self.drift_and_sigma(x_start, h, t)
        out = {
            "drift": losses.drift_loss(xs, x_next, mu_s, dt),
            "diffusion": losses.diffusion_loss(xs, x_next, mu_s, sig_s, dt),
        }
        if ce_mask is not None:
            x, z, mu, sig, v_next = x[ce_mask], z[ce_mask], mu[ce_mask], sig[ce_mask], v_next[ce_mask]
        # With a read-out, the cross-entropy trains the read-out and not the drift, which is
        # left to fit the increments (docs/design.md §2.5).
        if self.readout_net is not None and not ce_trains_drift:
            mu = mu.detach()
        mean = self.read_mean(x, mu, self.readout_shift(z))
        logits = self.emission.next_token_logits(mean, (sig.detach() ** 2) * dt)
        out["ce"] = losses.emission_ce(logits, v_next)  # overwrites the logits: read them before, never after
        return out


def _mlp_layers(net: nn.Sequential) -> list | None:
    """(weight, bias, activation) per linear layer of an MLP of Linear, SiLU and Dropout (an
    identity in eval mode) layers, activation "swish" (SiLU) or "none"; None for any other layer."""
    mods = [m for m in net if not isinstance(m, nn.Dropout)]
    layers = []
    for i, m in enumerate(mods):
        if isinstance(m, nn.SiLU):
            if i == 0 or not isinstance(mods[i - 1], nn.Linear):
                return None
            continue
        if not isinstance(m, nn.Linear):
            return None
        activation = "swish" if i + 1 < len(mods) and isinstance(mods[i + 1], nn.SiLU) else "none"
        layers.append((m.weight.detach(), None if m.bias is None else m.bias.detach(), activation))
    return layers


def _pack_layers(layers: list) -> list | None:
    """:func:`_mlp_layers`' layers with oneDNN-packed weights, or None where oneDNN declines."""
    packed = []
    for weight, bias, activation in layers:
        w = onednn.pack(weight, bias, activation)
        if w is None:
            return None
        packed.append((w, bias, activation))
    return packed


class ScaledSDE:
    """A view of a :class:`TextSDE` at diffusion scale ``s`` (torchsde interface), so that
    simulating at a scale never changes the shared model."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, model: TextSDE, scale: float):
        self.model, self.scale = model, float(scale)

    def f(self, t, y: torch.Tensor) -> torch.Tensor:
        return self.model.f(t, y)

    def g(self, t, y: torch.Tensor) -> torch.Tensor:
        x, h = self.model.split(y)
        return torch.cat([self.scale * self.model.sigma(x, h, t), torch.zeros_like(h)], dim=-1)

    def f_and_g(self, t, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``f`` and ``g`` together, the nets' bounded inputs computed once (torchsde calls this
        when a solver needs both; the values equal ``f`` and ``g``)."""
        x, h = self.model.split(y)
        mu, sigma = self.model.drift_and_sigma(x, h, t)
        return (torch.cat([mu, self.model.memory_rate(x, h)], dim=-1),
                torch.cat([self.scale * sigma, torch.zeros_like(h)], dim=-1))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
