"""Answer-only unembedding (workbench.engine.readout) against the model's own logits."""

from __future__ import annotations

import torch

from workbench.core.backend import final_residual
from workbench.engine.readout import Readout, token_logprobs, unembed


def test_unembed_and_token_logprobs_match_the_full_forward(tiny_model):
    tokens = torch.tensor([[3, 7, 1, 4, 9]])
    with torch.no_grad():
        h = final_residual(tiny_model, tokens)[0]  # (pos, d_model)
        logits = tiny_model(tokens)[0].float()  # (pos, d_vocab)
        torch.testing.assert_close(unembed(tiny_model, h), logits, atol=1e-5, rtol=1e-5)
        lp = token_logprobs(tiny_model, h[:-1], tokens[0, 1:])
    want = logits[:-1].log_softmax(-1).gather(1, tokens[0, 1:, None]).squeeze(1)
    torch.testing.assert_close(lp, want, atol=1e-5, rtol=1e-5)
    assert lp.dtype == torch.float32


def test_readout_sums_each_answers_tokens(tiny_model):
    tokens = torch.tensor([[3, 7, 1, 4, 9]])
    with torch.no_grad():
        h = final_residual(tiny_model, tokens)[0]
    targets = tokens[0, 1:]
    r = Readout(h[:-1], targets, torch.tensor([0, 0, 1, 1]), h[[1, 3]])
    per_token = token_logprobs(tiny_model, h[:-1], targets)
    torch.testing.assert_close(r.logprobs(tiny_model, 2), torch.stack([per_token[:2].sum(), per_token[2:].sum()]))
