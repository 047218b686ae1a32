"""Which token pairs count: training reads prompt + response, evaluation the response's own pairs."""

import pandas as pd
import torch

from sdecore import ModelConfig, TextSDE
from sdecore.transitions import build_transitions, encode_rows, training_tokens


def test_rows_read_prompt_then_response(embedder):
    df = pd.DataFrame({"prompt": ["why is the sky blue?", "why is the sky blue?"],
                       "response": ["light scatters.", "air scatters blue light."]})
    p = embedder.encode("why is the sky blue?")
    seqs, firsts = encode_rows(embedder, df, training=False)
    assert seqs[0] == p + embedder.encode("light scatters.") and firsts == [len(p), len(p)]
    tr_seqs, tr_firsts = encode_rows(embedder, df, training=True, include_prompts=True)
    assert len(tr_seqs) == 3 and tr_seqs[2] == p and tr_firsts == [len(p) - 1, len(p) - 1, 0]
    assert training_tokens(tr_seqs, tr_firsts)[0] == p[-1:] + embedder.encode("light scatters.")

    model = TextSDE(ModelConfig(drift_hidden=8, diffusion_hidden=8, readout_hidden=8), embedder)
    data = build_transitions(model, seqs, firsts)
    r0, r1 = embedder.encode("light scatters."), embedder.encode("air scatters blue light.")
    assert len(data) == len(r0) - 1 + len(r1) - 1  # pairs inside each response
    assert data.v[0] == r0[0] and data.v_next[0] == r0[1]
    assert data.seq.tolist() == [0] * (len(r0) - 1) + [1] * (len(r1) - 1)
    # the memory at the first response token has read the whole prompt
    xs = model.token_states(torch.tensor(seqs[0])).unsqueeze(0)
    assert torch.allclose(data.h[0], model.teacher_forced_memory(xs)[0, len(p)])
    assert torch.allclose(data.t[0], torch.tensor(len(p) * model.config.dt))
