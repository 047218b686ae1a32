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
from dataclasses import dataclass

import torch

from .model import TextSDE


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

    @classmethod
    def from_lists(cls, seqs: list[list[int]], firsts: list[int] | None = None) -> TokenSequences:
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
        offsets = torch.zeros(len(seqs) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(lengths, 0)
        ids = torch.tensor([v for s in seqs for v in s], dtype=torch.int32)
        first = torch.tensor(firsts if firsts is not None else [0] * len(seqs), dtype=torch.int64)
        return cls(ids=ids, offsets=offsets, firsts=first)

    def __len__(self) -> int:
        return self.firsts.numel()

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
    """The transitions of some windows: x, x_next (n, dim); h (n, K * dim); t (n,); v_next (n,)."""

    x: torch.Tensor
    h: torch.Tensor
    t: torch.Tensor
    x_next: torch.Tensor
    v_next: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def as_tuple(self) -> tuple[torch.Tensor, ...]:
        return self.x, self.h, self.t, self.x_next, self.v_next


def window_batch(model: TextSDE, data: TokenSequences, windows: torch.Tensor) -> WindowBatch:
    """The transitions of ``windows`` (rows ``(sequence, k0, k1)``), built on the model's device:
    ids gathered on the host (pinned when the device is a GPU), then the embedding lookup and
    the memory on the device."""
    device = model.emb_mean.device
    seq, k0, k1 = windows[:, 0], windows[:, 1], windows[:, 2]
    start = data.offsets[seq]
    width = int((k1 - k0).max())
    # the prefixes: for time scale k, positions k0 - reach_k .. k0 - 1 of each window's sequence
    # (earlier ones weigh below float32 resolution), flattened scale-major with no padding
    reach = torch.tensor(model.memory_reach(), dtype=torch.int64)  # (K,)
    sizes = torch.minimum(k0[None, :], reach[:, None]).reshape(-1)  # (K * w,)
    n_prefix = int(sizes.sum())
    bag_offsets = torch.cumsum(sizes, 0) - sizes
    owner = torch.arange(len(windows)).repeat(len(reach))  # the window of each bag
    bag = torch.repeat_interleave(torch.arange(sizes.numel()), sizes, output_size=n_prefix)
    prefix_lag = torch.arange(n_prefix) - bag_offsets[bag]  # 0 for the token just before k0
    prefix_ids = data.ids[start[owner[bag]] + k0[owner[bag]] - 1 - prefix_lag].long()
    # the windows' own positions k0 .. k0 + width, cut at each sequence's last token
    i = torch.arange(width + 1)
    at = torch.minimum(k0[:, None] + i[None, :], k1[:, None])  # (w, width + 1); k1 is a real position
    window_ids = data.ids[start[:, None] + at].long()
    if device.type == "cuda":
        prefix_ids, prefix_lag, window_ids = (a.pin_memory() for a in (prefix_ids, prefix_lag, window_ids))
    move = {"device": device, "non_blocking": True}
    window_ids = window_ids.to(**move)
    xs, h = model.window_states(prefix_ids.to(**move), prefix_lag.to(**move), bag_offsets.to(**move), window_ids)
    keep = (i[None, :width] < (k1 - k0)[:, None]).to(device)  # (w, width): the counted positions
    x, x_next = xs[:, :-1][keep], xs[:, 1:][keep]
    v_next = window_ids[:, 1:][keep]
    t = ((k0[:, None] + i[None, :width]).to(device)[keep] * model.config.dt).to(x.dtype)
    return WindowBatch(x=x, h=h[keep], t=t, x_next=x_next, v_next=v_next)


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
