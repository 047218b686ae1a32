"""Token sequences to teacher-forced transitions ``(x_k, h_k, t_k) -> (x_{k+1}, v_{k+1})``
(docs/design.md §2.5).

A corpus row is read as its prompt followed by its response, so the memory at a response
token holds the prompt, as it does when a prompt is continued. Which pairs count:
for training, every pair whose target lies in the response (the prompt-to-response step
included) and, optionally, each distinct prompt's own pairs once; for evaluation, the
adjacent pairs inside each response, the same for every model.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from .embedding import Embedder
from .model import TextSDE
from .tokendata import encode_corpus

_CHUNK = 64  # sequences whose memory is computed together


@dataclass
class Transitions:
    """All adjacent token pairs inside each sequence, N of them.

    x, x_next: (N, dim); h: (N, K * dim); t: (N,); v, v_next: (N,) token ids;
    seq: (N,) index of the sequence each transition comes from (the corpus row, for encode_rows).
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

    def to(self, device: torch.device | str) -> Transitions:
        """The same transitions with every tensor on ``device``."""
        return Transitions(**{f: getattr(self, f).to(device) for f in self.__dataclass_fields__})

    def take(self, idx: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """The batch ``idx`` as (x, h, t, x_next, v_next) on ``device``."""
        return tuple(a[idx].to(device, non_blocking=True) for a in (self.x, self.h, self.t, self.x_next, self.v_next))


def encode_rows(embedder: Embedder, df: pd.DataFrame, training: bool,
                include_prompts: bool = False) -> tuple[list[list[int]], list[int]]:
    """:func:`sdecore.tokendata.encode_corpus` as Python lists: the token sequences
    ``prompt + response`` of each row and, per sequence, the first position k whose pair
    (k, k+1) counts."""
    data = encode_corpus(embedder, df, training=training, include_prompts=include_prompts)
    return data.sequences(), data.firsts.tolist()


def training_tokens(seqs: list[list[int]], firsts: list[int]) -> list[list[int]]:
    """The counted part of each sequence: its tokens from ``first`` on (for unigram counts
    and n-gram fits, so they see exactly the pairs the SDE is trained on)."""
    return [s[f:] for s, f in zip(seqs, firsts)]


@torch.no_grad()
def build_transitions(model: TextSDE, seqs: list[list[int]], firsts: list[int] | None = None) -> Transitions:
    """Teacher-forced transitions of token id sequences: pairs (k, k+1) with k >= firsts[i]
    (all pairs without ``firsts``); the memory always reads each sequence from its start."""
    firsts = firsts if firsts is not None else [0] * len(seqs)
    dt = model.config.dt
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("x", "h", "t", "x_next", "v", "v_next", "seq")}
    # Chunks of similar length waste little padding; the transitions come out in sequence order.
    order = sorted((i for i in range(len(seqs)) if len(seqs[i]) - firsts[i] >= 2), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), _CHUNK):
        chunk = order[start : start + _CHUNK]
        length = max(len(seqs[i]) for i in chunk)
        ids = torch.zeros(len(chunk), length, dtype=torch.long)
        valid = torch.zeros(len(chunk), length, dtype=torch.bool)
        for row, i in enumerate(chunk):
            ids[row, : len(seqs[i])] = torch.as_tensor(seqs[i])
            valid[row, firsts[i] : len(seqs[i]) - 1] = True  # position k counts and has a successor
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
        raise ValueError("no response has two or more tokens: there are no transitions")
    out = {k: torch.cat(v) for k, v in parts.items()}
    back = torch.argsort(out["seq"], stable=True)
    return Transitions(**{k: v[back] for k, v in out.items()})
