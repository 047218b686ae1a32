"""Training data held as token ids only, and batches of transitions made from it on the fly
(docs/design.md §2.5).

A corpus becomes one flat integer array of token ids with each sequence's offset: four bytes a
token, whatever the embedding width. A batch is a set of *windows*, runs of at most ``width``
consecutive counted positions of one sequence. Its states are looked up in the embedding table
on the compute device, and the memory at each position is computed there from the sequence's
start (:meth:`sdecore.model.TextSDE.window_states`): the same values a precomputed table would
hold, with nothing proportional to the corpus size times the state size ever in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .embedding import Embedder
from .limits import MAX_PROMPT_TOKENS
from .model import TextSDE

_ENCODE_CHUNK = 4096  # rows tokenised per call


@dataclass
class TokenSequences:
    """Token id sequences, concatenated.

    ids: (T,) int32, every sequence's ids one after another; offsets: (S + 1,) int64, sequence s
    is ``ids[offsets[s]:offsets[s + 1]]``; firsts: (S,) int64, the first position k of sequence s
    whose pair (k, k + 1) counts (the memory still reads the sequence from its start).
    """

    ids: torch.Tensor
    offsets: torch.Tensor
    firsts: torch.Tensor
    _copies: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def on(self, device: torch.device) -> torch.Tensor:
        """``ids`` on ``device``: the tensor itself on the CPU, elsewhere a copy made once per
        device (four bytes a token, tens of MB for full HelpSteer) and never refreshed (the ids are
        not changed once built), so a batch's ids are gathered where they are used."""
        device = torch.device(device)
        if device.type == "cpu":
            return self.ids
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._copies:
            self._copies[device] = self.ids.to(device)
        return self._copies[device]

    @classmethod
    def from_lists(cls, seqs: list[list[int]], firsts: list[int] | None = None) -> TokenSequences:
        return cls.from_arrays([np.asarray(s, dtype=np.int32) for s in seqs],
                               firsts if firsts is not None else [0] * len(seqs))

    @classmethod
    def from_arrays(cls, parts: list[np.ndarray], firsts: list[int]) -> TokenSequences:
        lengths = np.fromiter((len(a) for a in parts), dtype=np.int64, count=len(parts))
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.concatenate(parts).astype(np.int32, copy=False) if parts else np.zeros(0, np.int32)
        return cls(ids=torch.from_numpy(ids), offsets=torch.from_numpy(offsets),
                   firsts=torch.tensor(firsts, dtype=torch.int64))

    def __len__(self) -> int:
        return self.firsts.numel()

    def sequences(self) -> list[list[int]]:
        """Each sequence's ids, as lists."""
        return [self.ids[int(self.offsets[s]):int(self.offsets[s + 1])].tolist() for s in range(len(self))]

    def counted(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The counted part of every sequence, concatenated: ids (T',) int64 and each sequence's
        length (S,), the flat form the n-gram baselines count from."""
        starts = self.offsets[:-1] + torch.minimum(self.firsts, self.lengths)
        lengths = self.offsets[1:] - starts
        # output position j of sequence s reads ids[starts[s] + j - (where s begins in the output)]
        shift = starts - (torch.cumsum(lengths, 0) - lengths)
        flat = torch.repeat_interleave(shift, lengths) + torch.arange(int(lengths.sum()))
        return self.ids[flat].long(), lengths

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def n_transitions(self) -> int:
        """Counted pairs: positions k >= first with a successor in their sequence."""
        return int((self.lengths - 1 - self.firsts).clamp_min(0).sum())

    def counted_tokens(self) -> list[list[int]]:
        """Each sequence's tokens from its first counted position on, as lists."""
        return [self.ids[int(self.offsets[s]) + int(self.firsts[s]):int(self.offsets[s + 1])].tolist()
                for s in range(len(self))]

    def positions(self, index: torch.Tensor) -> torch.Tensor:
        """The transitions numbered ``index`` (n,) in sequence order (the order of
        ``windows(1)``) as width-one windows: (n, 3) int64 rows ``(sequence, k, k + 1)``,
        found by binary search, without listing every transition."""
        counted = (self.lengths - 1 - self.firsts).clamp_min(0)
        ends = torch.cumsum(counted, 0)  # transitions up to and including sequence s
        index = torch.as_tensor(index, dtype=torch.int64)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= int(ends[-1])):
            raise ValueError(f"transition numbers must lie in [0, {int(ends[-1])})")
        seq = torch.searchsorted(ends, index, right=True)
        k = self.firsts[seq] + index - (ends[seq] - counted[seq])
        return torch.stack([seq, k, k + 1], dim=1)

    def windows(self, width: int) -> torch.Tensor:
        """Every counted position, in runs of at most ``width`` per sequence: (n, 3) int64 rows
        ``(sequence, k0, k1)`` covering positions k0 <= k < k1, in sequence order."""
        if width < 1:
            raise ValueError(f"the window width must be at least 1, got {width}")
        counted = (self.lengths - 1 - self.firsts).clamp_min(0)
        per_seq = (counted + width - 1) // width
        seq = torch.repeat_interleave(torch.arange(len(self)), per_seq)
        # the rank of each window within its sequence
        starts = torch.cumsum(per_seq, 0) - per_seq
        rank = torch.arange(seq.numel()) - torch.repeat_interleave(starts, per_seq)
        k0 = self.firsts[seq] + rank * width
        k1 = torch.minimum(k0 + width, self.lengths[seq] - 1)
        return torch.stack([seq, k0, k1], dim=1)


@dataclass
class WindowBatch:
    """The transitions of some windows: x, x_next (n, dim); h (n, K * dim); t (n,); the token
    ids v (current) and v_next (n,), and the sequence each transition comes from, seq (n,)."""

    x: torch.Tensor
    h: torch.Tensor
    t: torch.Tensor
    x_next: torch.Tensor
    v_next: torch.Tensor
    v: torch.Tensor | None = None
    seq: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def as_tuple(self) -> tuple[torch.Tensor, ...]:
        return self.x, self.h, self.t, self.x_next, self.v_next


def window_batch(model: TextSDE, data: TokenSequences, windows: torch.Tensor) -> WindowBatch:
    """The transitions of ``windows`` (rows ``(sequence, k0, k1)``), built on the model's device.
    The per-window numbers (offsets, sizes, widths) are worked out on the host, where the windows
    are, so the host never waits for the device; the per-entry index arithmetic, the gathers of
    ids (from their copy there, :meth:`TokenSequences.on`), the embedding lookup and the memory run
    on the device. On a GPU, gathering the ids on the host bound training at large batches."""
    device = model.emb_mean.device
    ids = data.on(device)
    seq, k0, k1 = windows[:, 0], windows[:, 1], windows[:, 2]
    start = data.offsets[seq]
    width = int((k1 - k0).max())
    # the prefixes: for time scale k, positions k0 - reach_k .. k0 - 1 of each window's sequence
    # (earlier ones weigh below float32 resolution), flattened scale-major with no padding
    reach = torch.tensor(model.memory_reach(), dtype=torch.int64)  # (K,)
    sizes = torch.minimum(k0[None, :], reach[:, None]).reshape(-1)  # (K * w,)
    n_prefix = int(sizes.sum())
    bag_offsets = torch.cumsum(sizes, 0) - sizes
    last = (start + k0 - 1).repeat(len(reach))  # the position just before each bag's window
    move = {"device": device, "non_blocking": True}
    seq, k0, k1, start, sizes, bag_offsets, last = (a.to(**move) for a in (seq, k0, k1, start, sizes, bag_offsets,
                                                                         last))
    # entry j of bag b is the position (start + k0 - 1) - (j - bag_offsets[b]) of the bag's window:
    # two repeat_interleaves of per-bag numbers, no gathers of per-entry ones
    j = torch.arange(n_prefix, device=device)
    prefix_lag = j - torch.repeat_interleave(bag_offsets, sizes, output_size=n_prefix)  # 0 just before k0
    prefix_ids = ids[torch.repeat_interleave(last + bag_offsets, sizes, output_size=n_prefix) - j].long()
    # the windows' own positions k0 .. k0 + width, cut at each sequence's last token
    i = torch.arange(width + 1, device=device)
    at = torch.minimum(k0[:, None] + i[None, :], k1[:, None])  # (w, width + 1); k1 is a real position
    window_ids = ids[start[:, None] + at].long()
    xs, h = model.window_states(prefix_ids, prefix_lag, bag_offsets, window_ids)
    keep = i[None, :width] < (k1 - k0)[:, None]  # (w, width): the counted positions
    x, x_next = xs[:, :-1][keep], xs[:, 1:][keep]
    v, v_next = window_ids[:, :-1][keep], window_ids[:, 1:][keep]
    t = ((k0[:, None] + i[None, :width])[keep] * model.config.dt).to(x.dtype)
    return WindowBatch(x=x, h=h[keep], t=t, x_next=x_next, v_next=v_next, v=v,
                       seq=seq[:, None].expand(-1, width)[keep])


def in_order(model: TextSDE, data: TokenSequences, *, width: int = 32, per_batch: int = 1024
             ) -> Iterator[WindowBatch]:
    """Every transition of ``data`` once, in sequence order, in batches of about
    ``per_batch`` transitions made of windows of ``width`` (wider windows share the memory's
    prefix among more positions; the values do not depend on the width)."""
    for windows in batches(data.windows(width), max(1, per_batch // width)):
        yield window_batch(model, data, windows)


def batches(windows: torch.Tensor, per_batch: int, *, generator: torch.Generator | None = None,
            rank: int = 0, world: int = 1) -> Iterator[torch.Tensor]:
    """Groups of ``per_batch`` windows, shuffled by ``generator`` (in order without one). With
    ``world > 1`` every rank takes its own disjoint, equally many groups (the trailing groups
    that cannot be shared out evenly are left out), as DDP needs."""
    order = torch.randperm(len(windows), generator=generator) if generator is not None else torch.arange(len(windows))
    groups = order.split(per_batch)
    if world > 1:
        usable = len(groups) // world * world
        if usable == 0:
            raise ValueError(f"too few train transitions for {world} processes; use fewer or a larger corpus")
        groups = groups[rank:usable:world]
    for g in groups:
        yield windows[g]


def encode_corpus(embedder: Embedder, df: pd.DataFrame, *, training: bool, include_prompts: bool = False
                  ) -> TokenSequences:
    """Token sequences ``prompt + response`` of each row of ``df`` (the prompt cut to its last
    MAX_PROMPT_TOKENS tokens, as in generation), with each sequence's first counted position:
    for ``training``, the prompt's last token (so the prompt-to-response step counts), else the
    response's first token (pairs inside the response only). Row i is sequence i; with
    ``training`` and ``include_prompts`` each distinct prompt follows as a sequence of its own,
    counted whole. Tokenised in batches straight into the flat layout (docs/design.md §2.5)."""
    prompts = list(dict.fromkeys(df["prompt"]))
    prompt_ids = {}
    for start in range(0, len(prompts), _ENCODE_CHUNK):
        chunk = prompts[start:start + _ENCODE_CHUNK]
        prompt_ids.update(zip(chunk, (a[-MAX_PROMPT_TOKENS:] for a in embedder.encode_batch(chunk))))
    parts: list[np.ndarray] = []
    firsts: list[int] = []
    for start in range(0, len(df), _ENCODE_CHUNK):
        rows = df.iloc[start:start + _ENCODE_CHUNK]
        for prompt, response in zip(rows["prompt"], embedder.encode_batch(rows["response"].tolist())):
            p = prompt_ids[prompt]
            parts.append(np.concatenate([p, response]))
            firsts.append(max(len(p) - 1, 0) if training else len(p))
    if training and include_prompts:
        parts.extend(prompt_ids.values())
        firsts.extend([0] * len(prompt_ids))
    return TokenSequences.from_arrays(parts, firsts)
