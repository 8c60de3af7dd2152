"""Atomic file writes for every artifact workbench produces.

A crash or Ctrl-C in the middle of a save must never leave a half-written vector, checkpoint or
cache behind: each writer writes a temporary file in the destination directory, flushes it to disk
and renames it over the destination (``os.replace`` is atomic on POSIX). Nothing here unpickles.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(Path(tmp))
        # mkstemp makes 0600 (and some writers replace the file): artifacts get the usual permissions
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(text: str, path: str | Path) -> Path:
    return _atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON; NaN and infinities are refused (JSON has none)."""
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False, default=_json_default)
    return atomic_write_text(text + "\n", path)


def atomic_write_safetensors(tensors: dict[str, torch.Tensor], path: str | Path,
                             metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return _atomic(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.dtype):
        return str(obj).removeprefix("torch.")
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_path)`` and rename the result over ``path`` atomically (any file format)."""
    return _atomic(path, write)
