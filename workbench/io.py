"""Atomic file writes for every artifact workbench produces.

A crash or Ctrl-C in the middle of a save must never leave a half-written vector, checkpoint or
cache behind: each writer writes a temporary file in the destination directory, flushes it to disk
and renames it over the destination (``os.replace`` is atomic on POSIX). Nothing here unpickles.
"""

from __future__ import annotations

import fcntl
import glob
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


def _atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while writing: marks the file as live, not stray
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
    finally:
        os.close(fd)
    return path


def clean_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the ``.NAME.XXXX.tmp`` files that killed writes of ``path`` left behind; returns them.

    A live writer holds an exclusive ``flock`` on its temporary file, so only orphans are removed.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            with open(tmp, "rb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                tmp.unlink()
            removed.append(tmp)
        except OSError:  # locked by a live writer, or already gone
            continue
    if removed:
        logger.info("removed %d stray temporary file(s) of %s", len(removed), path)
    return removed


def pending(path: str | Path) -> Path:
    """Where a file of a multi-file artifact is staged before ``commit_files`` moves it to ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.new")


def commit_files(directory: str | Path, names: Sequence[str]) -> None:
    """Move the staged ``pending`` files of ``names`` into place, the last name last.

    The last file (the one recording the others' checksums) is the commit mark: once its staged copy
    exists (written atomically, so whole), the artifact is committed and ``recover_files`` rolls a kill
    between the renames forward; before that, the previous artifact is untouched and its staged files
    are discarded. So after a kill at any moment the directory holds the old artifact or the new one.
    """
    directory = Path(directory)
    for name in names:
        staged = pending(directory / name)
        if staged.exists():
            os.replace(staged, directory / name)
    _fsync_dir(directory)


def recover_files(directory: str | Path, names: Sequence[str]) -> None:
    """Finish or discard an interrupted ``commit_files`` of ``names`` in ``directory``; clean stray temporaries."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    try:
        if pending(directory / names[-1]).exists():
            logger.warning("%s: completing an interrupted write of %s", directory, ", ".join(names))
            commit_files(directory, names)
        else:
            for name in names:
                pending(directory / name).unlink(missing_ok=True)
        for name in names:
            clean_stale_temporaries(directory / name)
            clean_stale_temporaries(pending(directory / name))
    except OSError as exc:  # a read-only directory: leave it as it is
        logger.warning("%s: cannot clean up an interrupted write (%s)", directory, exc)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(text: str, path: str | Path) -> Path:
    return _atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON; NaN and infinities are refused (JSON has none)."""
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False, default=_json_default)
    return atomic_write_text(text + "\n", path)


def atomic_write_safetensors(tensors: dict[str, torch.Tensor], path: str | Path,
                             metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    # bytes written into our temporary file (save_file would write its own hidden temporary and
    # replace ours, which a kill could leave behind)
    return _atomic(path, lambda p: p.write_bytes(save(tensors, metadata=metadata)))


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
