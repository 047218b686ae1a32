"""Token sequences to teacher-forced transitions ``(x_k, h_k, t_k) -> (x_{k+1}, v_{k+1})``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .embedding import Embedder
from .model import TextSDE

_CHUNK = 64  # sequences whose memory is computed together


@dataclass
class Transitions:
    """All adjacent token pairs inside each sequence, N of them.

    x, x_next: (N, dim); h: (N, K * dim); t: (N,); v, v_next: (N,) token ids;
    seq: (N,) index of the sequence each transition comes from.
    """

    x: torch.Tensor
    h: torch.Tensor
    t: torch.Tensor
    x_next: torch.Tensor
    v: torch.Tensor
    v_next: torch.Tensor
    seq: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def take(self, idx: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """The batch ``idx`` as (x, h, t, x_next, v_next) on ``device``."""
        return tuple(a[idx].to(device, non_blocking=True) for a in (self.x, self.h, self.t, self.x_next, self.v_next))


def encode_texts(embedder: Embedder, texts: list[str]) -> list[list[int]]:
    return [embedder.encode(t) for t in texts]


@torch.no_grad()
def build_transitions(model: TextSDE, seqs: list[list[int]]) -> Transitions:
    """Teacher-forced transitions of token id sequences (those with fewer than two tokens give none)."""
    dt = model.config.dt
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("x", "h", "t", "x_next", "v", "v_next", "seq")}
    order = [i for i in range(len(seqs)) if len(seqs[i]) >= 2]
    for start in range(0, len(order), _CHUNK):
        chunk = order[start : start + _CHUNK]
        length = max(len(seqs[i]) for i in chunk)
        ids = torch.zeros(len(chunk), length, dtype=torch.long)
        valid = torch.zeros(len(chunk), length, dtype=torch.bool)
        for row, i in enumerate(chunk):
            ids[row, : len(seqs[i])] = torch.as_tensor(seqs[i])
            valid[row, : len(seqs[i]) - 1] = True  # position k has a successor
        xs = model.token_states(ids.to(model.emb_mean.device)).cpu()
        hs = model.teacher_forced_memory(xs)
        k = torch.arange(length).expand(len(chunk), length)
        parts["x"].append(xs[:, :-1][valid[:, :-1]])
        parts["h"].append(hs[:, :-1][valid[:, :-1]])
        parts["t"].append((k[:, :-1][valid[:, :-1]] * dt).to(torch.float32))
        parts["x_next"].append(xs[:, 1:][valid[:, :-1]])
        parts["v"].append(ids[:, :-1][valid[:, :-1]])
        parts["v_next"].append(ids[:, 1:][valid[:, :-1]])
        parts["seq"].append(torch.as_tensor(chunk).unsqueeze(1).expand(len(chunk), length)[:, :-1][valid[:, :-1]])
    if not order:
        raise ValueError("no text has two or more tokens: nothing to learn transitions from")
    return Transitions(**{k: torch.cat(v) for k, v in parts.items()})
