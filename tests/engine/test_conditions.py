"""Steering conditions and where a vector enters (workbench.engine.conditions)."""

from __future__ import annotations

import pytest
import torch

from workbench.core.vector import IncompatibleVectorError, SteeringVector, full_hook_name
from workbench.engine.conditions import (as_vector_list, condition_deltas, entry, label_vectors, start_layer,
                                         sweep_conditions)


def vec(layer: int, point: str = "resid_post", d: int = 32, method: str = "x") -> SteeringVector:
    return SteeringVector(torch.arange(float(d)), full_hook_name(layer, point), method=method)


def test_entry_is_the_first_block_a_vector_changes(tiny_model):
    assert entry(tiny_model, "blocks.1.hook_resid_pre") == (1, True)
    assert entry(tiny_model, "blocks.1.hook_resid_post") == (2, True)
    for point in ("resid_mid", "attn_out", "mlp_out"):
        assert entry(tiny_model, full_hook_name(1, point)) == (1, False)
    with pytest.raises(ValueError, match="does not exist"):
        entry(tiny_model, "blocks.9.hook_resid_post")


def test_sweep_conditions_share_the_unsteered_condition_and_deltas_scale():
    a, b = vec(0, method="bipo"), vec(2, "attn_out", method="caa")
    conds, keys = sweep_conditions({"a": [a], "ab": [a, b]}, [0, -1.0, 2])
    assert keys == [("a", 0.0), ("a", -1.0), ("a", 2.0), ("ab", 0.0), ("ab", -1.0), ("ab", 2.0)]
    assert conds[0] == () and conds[3] == () and conds[5] == ((a, 2.0), (b, 2.0))
    deltas = condition_deltas(((a, 2.0), (b, 0.0)))  # a zero multiplier adds nothing
    assert [name for name, _ in deltas] == [a.hook_name] and torch.equal(deltas[0][1], 2 * a.vector)


def test_start_layer_is_the_lowest_entry(tiny_model):
    deltas = condition_deltas(((vec(2), 1.0), (vec(1, "mlp_out"), 1.0)))
    assert start_layer(tiny_model, deltas) == 1
    assert start_layer(tiny_model, []) == tiny_model.cfg.n_layers


def test_labels_and_checks(tiny_model):
    a, b = vec(0, method="bipo"), vec(1, method="caa")
    assert label_vectors(a) == {"bipo": [a]} and label_vectors([a, b]) == {"bipo+caa": [a, b]}
    assert label_vectors({"mine": a}, tiny_model) == {"mine": [a]}
    with pytest.raises(TypeError, match=r"vectors\['x'\]\[0\] is a Tensor"):
        label_vectors({"x": [torch.zeros(32)]})
    with pytest.raises(ValueError, match="no vectors given"):
        label_vectors({})
    with pytest.raises(IncompatibleVectorError):
        label_vectors(vec(0, d=8), tiny_model)
    assert as_vector_list(a) == [a]
