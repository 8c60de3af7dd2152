"""Runners: the model, or a laid-out or bf16 copy of its upper blocks (workbench.engine.runners)."""

from __future__ import annotations

import pytest
import torch

from workbench.engine.runners import make_runner, precision_runner


def _storages(*modules) -> dict[int, int]:
    out = {}
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            s = t.untyped_storage()
            out[s.data_ptr()] = s.nbytes()
    return out


@pytest.mark.tl3
def test_runner_shares_weights_lays_out_only_block_matrices_and_leaves_the_model_alone(tiny_model):
    before = {k: p.clone() for k, p in tiny_model.state_dict().items()}
    runner = make_runner(tiny_model, 2)
    extra = set(_storages(runner)) - set(_storages(tiny_model))
    laid_out = [p for n, p in tiny_model.blocks[2].named_parameters()
                if n.rsplit(".", 1)[-1] in ("W_Q", "W_K", "W_V", "_W_K", "_W_V", "W_O", "W_in", "W_gate", "W_out")]
    # the docstring's formula on CPU: block 2's matrices once more, nothing else
    assert sum(_storages(runner)[k] for k in extra) == sum(p.numel() * p.element_size() for p in laid_out)
    assert runner.blocks[0].attn.W_Q is tiny_model.blocks[0].attn.W_Q and runner.W_E is tiny_model.W_E
    for k, p in tiny_model.state_dict().items():
        assert torch.equal(p, before[k])
    low = make_runner(tiny_model, 1, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in low.blocks[1:].parameters())
    assert all(p.dtype == torch.float32 for p in tiny_model.parameters())
    extra = set(_storages(low)) - set(_storages(tiny_model))
    tensors = list(tiny_model.blocks[1:].parameters()) + [b for b in tiny_model.blocks[1:].buffers()
                                                          if b.is_floating_point()]  # + rotary tables
    assert sum(_storages(low)[k] for k in extra) == sum(t.numel() * 2 for t in tensors)


def test_precision_runner_is_the_model_in_fp32_and_a_bf16_copy_otherwise(tiny_model):
    assert precision_runner(tiny_model, "fp32") is tiny_model
    low = precision_runner(tiny_model, "bf16", 1)
    assert low is not tiny_model and low.cfg.dtype == torch.bfloat16 and tiny_model.cfg.dtype == torch.float32
    tokens = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(low(tokens).float(), tiny_model(tokens), atol=0.1, rtol=0.05)
    with pytest.raises(ValueError, match="precision='fp16'"):
        precision_runner(tiny_model, "fp16")
