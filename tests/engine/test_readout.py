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


def test_scratch_gives_the_same_log_probs_bit_for_bit_and_keeps_its_buffer(tiny_model):
    """Log-probs written into a reused buffer equal the fresh path's bit for bit, chunk after chunk; where autograd
    records (a gradient wanted), the scratch is not written and the gradient flows."""
    from workbench.engine.readout import Scratch

    g = torch.Generator().manual_seed(0)
    d, v = tiny_model.cfg.d_model, tiny_model.cfg.d_vocab
    scratch = Scratch()
    with torch.no_grad():
        firsts = []
        for n in (9, 5, 9):  # a smaller chunk after a larger one: the same buffer
            h = 3 * torch.randn(n, d, generator=g)
            targets = torch.randint(0, v, (n,), generator=g)
            got = token_logprobs(tiny_model, h, targets, scratch)
            assert torch.equal(got, token_logprobs(tiny_model, h, targets))
            assert torch.equal(unembed(tiny_model, h, scratch), unembed(tiny_model, h))
            firsts.append(scratch._buffers[0].data_ptr())
        assert len(set(firsts)) == 1
    h = torch.randn(4, d, generator=g, requires_grad=True)
    targets = torch.randint(0, v, (4,), generator=g)
    before = scratch._buffers[0].clone()
    lp = token_logprobs(tiny_model, h, targets, scratch)
    lp.sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    assert torch.equal(scratch._buffers[0], before)  # untouched while recording
    torch.testing.assert_close(lp.detach(), token_logprobs(tiny_model, h.detach(), targets))
