"""Training data as token ids, batches built on the fly: the same transitions, states and
memory as the precomputed table (sdecore.transitions.build_transitions), each transition once
per epoch, shuffled by seed, and disjoint shares for the ranks of a torchrun job."""

import pytest
import torch

from sdecore import ModelConfig, TextSDE
from sdecore.tokendata import TokenSequences, batches, window_batch
from sdecore.transitions import build_transitions


@pytest.fixture(scope="module")
def setup(embedder):
    model = TextSDE(ModelConfig(drift_hidden=8, diffusion_hidden=8, readout_hidden=8), embedder)
    g = torch.Generator().manual_seed(0)
    support = embedder.support_mask.nonzero().squeeze(1)
    # 1,500 tokens: longer than the reach of the 64-token memory (about 1,180), so the cut prefix is checked
    lengths = [1, 2, 3, 40, 300, 17, 1500, 5] + torch.randint(1, 200, (20,), generator=g).tolist()
    seqs = [support[torch.randint(len(support), (n,), generator=g)].tolist() for n in lengths]
    firsts = [0 if len(s) < 3 else int(torch.randint(0, len(s) - 1, (1,), generator=g)) for s in seqs]
    return model, seqs, firsts


def test_the_flat_layout_counts_the_transitions(setup):
    _, seqs, firsts = setup
    data = TokenSequences.from_lists(seqs, firsts)
    assert data.ids.dtype == torch.int32 and len(data) == len(seqs)
    assert data.n_transitions == sum(max(len(s) - 1 - f, 0) for s, f in zip(seqs, firsts))
    for s in (0, 4, len(seqs) - 1):
        assert data.ids[data.offsets[s]:data.offsets[s + 1]].tolist() == seqs[s]


@pytest.mark.parametrize("width", [1, 5, 16, 64])
def test_batches_built_on_the_fly_equal_the_precomputed_table(setup, width):
    model, seqs, firsts = setup
    old = build_transitions(model, seqs, firsts)
    data = TokenSequences.from_lists(seqs, firsts)
    windows = data.windows(width)
    assert int((windows[:, 2] - windows[:, 1]).max()) <= width and int((windows[:, 2] - windows[:, 1]).min()) >= 1
    new = window_batch(model, data, windows)
    assert len(new) == len(old)
    torch.testing.assert_close(new.x, old.x, rtol=0, atol=0)
    torch.testing.assert_close(new.x_next, old.x_next, rtol=0, atol=0)
    torch.testing.assert_close(new.t, old.t, rtol=0, atol=0)
    assert torch.equal(new.v_next, old.v_next)
    # the memory: a float32 weighted sum on the device against scipy's float64 filter, cast
    torch.testing.assert_close(new.h, old.h, rtol=1e-5, atol=2e-6)


def test_an_epoch_takes_every_window_once_in_a_seeded_order(setup):
    _, seqs, firsts = setup
    windows = TokenSequences.from_lists(seqs, firsts).windows(8)
    a = torch.cat(list(batches(windows, 3, generator=torch.Generator().manual_seed(1))))
    b = torch.cat(list(batches(windows, 3, generator=torch.Generator().manual_seed(1))))
    c = torch.cat(list(batches(windows, 3, generator=torch.Generator().manual_seed(2))))
    assert torch.equal(a, b) and not torch.equal(a, c)
    key = lambda w: sorted(map(tuple, w.tolist()))  # noqa: E731
    assert key(a) == key(windows) == key(c)


def test_ranks_take_disjoint_equal_shares(setup):
    _, seqs, firsts = setup
    windows = TokenSequences.from_lists(seqs, firsts).windows(4)
    shares = [list(batches(windows, 2, generator=torch.Generator().manual_seed(3), rank=r, world=3)) for r in range(3)]
    assert len({len(s) for s in shares}) == 1  # DDP needs the same number of steps on every rank
    seen = [tuple(w) for s in shares for g in s for w in g.tolist()]
    assert len(seen) == len(set(seen)) and len(seen) >= len(windows) - 3 * 2  # at most the uneven tail is left
    with pytest.raises(ValueError, match="too few train transitions"):
        list(batches(windows[:2], 2, rank=0, world=3))


def test_counted_tokens_are_the_training_tokens(setup):
    from sdecore.transitions import training_tokens

    _, seqs, firsts = setup
    assert TokenSequences.from_lists(seqs, firsts).counted_tokens() == training_tokens(seqs, firsts)


def test_positions_and_the_counted_ids_read_the_flat_layout(setup):
    _, seqs, firsts = setup
    data = TokenSequences.from_lists(seqs, firsts)
    every = data.windows(1)
    idx = torch.randint(0, data.n_transitions, (300,), generator=torch.Generator().manual_seed(4))
    assert torch.equal(data.positions(idx), every[idx])
    assert torch.equal(data.positions(torch.arange(data.n_transitions)), every)
    with pytest.raises(ValueError, match="transition numbers"):
        data.positions(torch.tensor([data.n_transitions]))
    ids, lengths = data.counted()
    counted = data.counted_tokens()
    assert lengths.tolist() == [len(c) for c in counted] and ids.tolist() == [v for c in counted for v in c]


def test_encoding_a_corpus_tokenises_each_row_as_encode_does(embedder):
    import pandas as pd

    from sdecore.limits import MAX_PROMPT_TOKENS
    from sdecore.tokendata import encode_corpus

    long_prompt = "word " * (MAX_PROMPT_TOKENS + 20)
    df = pd.DataFrame({"prompt": ["Why is the sky blue?", long_prompt, "Why is the sky blue?"],
                       "response": ["Light scatters [SEP] off air.", "Fine.", "Because of Rayleigh scattering."]})
    data = encode_corpus(embedder, df, training=True, include_prompts=True)
    prompts = [embedder.encode(p)[-MAX_PROMPT_TOKENS:] for p in df["prompt"]]
    want = [p + embedder.encode(r) for p, r in zip(prompts, df["response"])] + [prompts[0], prompts[1]]
    assert data.sequences() == want  # special tokens in the text are dropped, as encode drops them
    assert data.firsts.tolist() == [len(p) - 1 for p in prompts] + [0, 0]
    val = encode_corpus(embedder, df, training=False)
    assert len(val) == 3 and val.firsts.tolist() == [len(p) for p in prompts]
