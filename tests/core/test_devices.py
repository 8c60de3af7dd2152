"""Device and dtype names, and block placement."""

from __future__ import annotations

import pytest
import torch

from workbench.core.devices import ModelLoadError, place_model, resolve_device, resolve_dtype


def test_devices_and_dtypes_resolve_or_name_the_problem():
    assert resolve_device("cpu") == "cpu" and resolve_device("auto") in ("cpu", "cuda")
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16
    for bad in ("cuda:x", "gpu", "cpu:0:1"):
        with pytest.raises(ModelLoadError, match="device"):
            resolve_device(bad)
    for bad in ("int8", torch.int8):
        with pytest.raises(ModelLoadError, match="dtype"):
            resolve_dtype(bad)


def test_place_model_checks_n_devices_and_moves(tiny_model):
    with pytest.raises(ModelLoadError, match="must be >= 1"):
        place_model(tiny_model, "cpu", 0)
    with pytest.raises(ModelLoadError, match="n_devices 2"):
        place_model(tiny_model, "cpu", 2)
    assert place_model(tiny_model, "cpu", 1) is tiny_model
    assert next(tiny_model.parameters()).device.type == "cpu"
