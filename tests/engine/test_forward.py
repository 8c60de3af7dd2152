"""One batch through the model (workbench.engine.forward): the shared fast path equals the plain one."""

from __future__ import annotations

import pytest
import torch

from workbench.core.backend import remaining_hooks
from workbench.core.vector import SteeringVector, full_hook_name
from workbench.engine.conditions import condition_deltas, start_layer
from workbench.engine.forward import (Stream, apply_deltas, assemble, check_positions, full_readout, length_batches,
                                      read_answers)
from workbench.engine.items import tokenize_items

POINTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def test_length_batches_sort_by_length_and_cover_every_item(tiny_model):
    items = tokenize_items(tiny_model, ["a b c d e f", "a", "a b c"], [["x"], ["y", "z z z"], ["w"]])
    assert length_batches(items, 2) == [[1, 2], [0]]
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        length_batches(items, 0)
    check_positions(tiny_model)  # rotary: supported


@pytest.mark.tl3  # a bridge always runs the full forward
@pytest.mark.parametrize("point", POINTS)
def test_prefix_and_prompt_sharing_equal_one_full_forward_per_answer(tiny_model, point):
    items = tokenize_items(tiny_model, ["Tell me a story", "Hi", "Why is the sky blue"],
                           [["Once upon", "No"], ["Hello there", "Bye"], ["Light", "Because of Rayleigh"]])
    v = SteeringVector(torch.randn(tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(5)),
                       full_hook_name(1, point), method="x")
    deltas = condition_deltas(((v, 1.5),))
    batch = assemble(tiny_model, items, [0, 1, 2])
    start = start_layer(tiny_model, deltas)
    with torch.no_grad():
        fast = read_answers(*apply_deltas(tiny_model, tiny_model, Stream(tiny_model, batch).at(start), start, deltas,
                                          batch), batch)
        plain = full_readout(tiny_model, batch, deltas)
    torch.testing.assert_close(fast.targets, plain.targets)
    torch.testing.assert_close(fast.logprobs(tiny_model, 6), plain.logprobs(tiny_model, 6), atol=2e-5, rtol=1e-5)
    # a residual row: packed blocks (workbench.engine.packed) sum in another order than TransformerLens' blocks
    torch.testing.assert_close(fast.h_last, plain.h_last, atol=1e-4, rtol=1e-4)
    assert remaining_hooks(tiny_model) == 0
