"""Where a model runs: device and dtype names, and the placement of its blocks over several GPUs.

TransformerLens places a ``HookedTransformer`` with ``cfg.device`` and ``cfg.n_devices``
(``get_device_for_block_index``: the embedding and the first ``n_layers // n_devices`` blocks on the
first GPU, and so on). Every loader of ``workbench.core`` resolves its ``device``/``dtype`` arguments
here, once, and raises ``ModelLoadError`` with a one-line reason for anything it cannot honour.
"""

from __future__ import annotations

import re

import torch

from workbench.core.backend import Model, is_bridge

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                                  "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
_DEVICE = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")


class ModelLoadError(ValueError):
    """A model cannot be loaded as asked (bad device, unknown config field, hub unreachable)."""


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.float32``/``bfloat16``/``float16`` from a dtype or its name (``fp32``, ``bf16``, ``fp16``).

    Raises:
        ModelLoadError: any other dtype or name.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ModelLoadError(f"dtype {dtype}: use one of fp32, bf16, fp16")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ModelLoadError(f"dtype {dtype!r}: use one of fp32, bf16, fp16") from None


def resolve_device(device: str | torch.device) -> str:
    """A torch device string from ``cpu``, ``cuda``, ``cuda:1``, ``mps`` or ``auto`` (cuda if available).

    Raises:
        ModelLoadError: a malformed name, or a CUDA device this machine does not have.
    """
    name = str(device).strip()
    if not _DEVICE.match(name):
        raise ModelLoadError(f"device {name!r}: use cpu, cuda, cuda:N, mps or auto")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {name!r}: CUDA is not available on this machine")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name


def place_model(model: Model, device: str, n_devices: int) -> Model:
    """Move ``model`` to ``device``; with ``n_devices > 1`` split its blocks over ``cuda:0..n-1``.

    Args:
        model: a loaded model (moved in place, as ``nn.Module.to``).
        device: a resolved device string (``resolve_device``).
        n_devices: 1, or the number of CUDA devices to split the blocks over (``HookedTransformer`` only).

    Raises:
        ModelLoadError: ``n_devices`` below 1, above the machine's CUDA devices, without a CUDA
            ``device``, or with a ``TransformerBridge`` (placed by accelerate's ``device_map`` instead).
    """
    if n_devices < 1:
        raise ModelLoadError(f"n_devices {n_devices}: must be >= 1")
    if n_devices > 1 and is_bridge(model):
        raise ModelLoadError("on TransformerLens 4 the embedded model runs on one device; pass n_devices or "
                             "device_map for a local directory or a hub name (accelerate's placement)")
    if n_devices > 1:
        if not device.startswith("cuda"):
            raise ModelLoadError(f"n_devices {n_devices} needs a CUDA device, got {device!r}")
        if n_devices > torch.cuda.device_count():
            raise ModelLoadError(f"n_devices {n_devices}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        model.cfg.n_devices = n_devices
        model.cfg.device = device
        model.move_model_modules_to_device()
    elif str(next(model.parameters()).device) != device:
        model.to(device)
    return model
