"""Atomic file writes for every artifact workbench produces, and a safe safetensors header check.

A crash or Ctrl-C in the middle of a save must never leave a half-written vector, checkpoint or
cache behind: each writer writes a temporary file in the destination directory, flushes it to disk
and renames it over the destination (``os.replace`` is atomic on POSIX). Nothing here unpickles.

One writer per artifact and multi-file artifacts are ``workbench.core.artifacts``. Disk errors name the
path they were writing.

``read_safetensors_header`` checks a safetensors file's header against the file's size before any
tensor is read, so a hostile or damaged file is refused with a message naming it, never allocated.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors

logger = logging.getLogger(__name__)


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` with ``path`` as its file name when it has none (``os.write`` and friends name nothing):
    "no space left on device" then says where."""
    if exc.filename is not None or exc.errno is None:
        return exc
    named = OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))  # the errno's subclass
    named.__cause__ = exc
    return named


def _atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    try:
        return _atomic_unnamed(path, write)
    except OSError as exc:
        named = _naming(exc, path)
        if named is exc:
            raise
        raise named from exc


def _atomic_unnamed(path: Path, write: Callable[[Path], None]) -> Path:
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


@contextlib.contextmanager
def atomic_directory(directory: str | Path) -> Iterator[Path]:
    """Write a whole directory (a model export) atomically: the block writes into a temporary sibling, which
    replaces ``directory`` only when the block finishes; on any error the old directory stays and the
    temporary one is removed.

    Example:
        >>> with atomic_directory("runs/export") as tmp:
        ...     tokenizer.save_pretrained(tmp)
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def json_text(obj: Any) -> str:
    """``obj`` as the indented JSON every writer here produces; NaN and infinities are refused."""
    return json.dumps(obj, indent=2, sort_keys=False, allow_nan=False, default=_json_default) + "\n"


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file's bytes (tensors made contiguous and moved to the CPU)."""
    return save_safetensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)


def atomic_write_text(text: str, path: str | Path) -> Path:
    return _atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON; NaN and infinities are refused (JSON has none)."""
    return atomic_write_text(json_text(obj), path)


def atomic_write_safetensors(tensors: dict[str, torch.Tensor], path: str | Path,
                             metadata: dict[str, str] | None = None) -> Path:
    # bytes written into our temporary file (save_file would write its own hidden temporary and
    # replace ours, which a kill could leave behind)
    data = safetensors_bytes(tensors, metadata)
    return _atomic(path, lambda p: p.write_bytes(data))


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


# --------------------------------------------------------------------------- safetensors headers
SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
                        "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
_MAX_HEADER = 100_000_000  # safetensors' own limit


def read_safetensors_header(path: str | Path, error: type[Exception] = ValueError,
                            dtypes: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """The tensor entries of a safetensors file's header, each checked against the file's size.

    Args:
        path: the file.
        error: the exception type raised (a ``ValueError`` subclass of the caller's module).
        dtypes: the allowed dtypes (``"F32"``, ...); ``None`` allows every safetensors dtype.

    Returns:
        ``{name: {"dtype", "shape", "data_offsets"}}`` without ``__metadata__``.

    Raises:
        error: a header length beyond the file, invalid JSON, an unknown or disallowed dtype, or a
            tensor whose bytes do not fit its shape or the file. The message names the file.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size < 8:
            raise error(f"{path}: not a readable safetensors file ({size} bytes, shorter than its header length)")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(size - 8, _MAX_HEADER):
            raise error(f"{path}: not a readable safetensors file (header length {n} exceeds the file's {size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise error(f"{path}: not a readable safetensors file (its header is not valid JSON)") from None
    if not isinstance(header, dict):
        raise error(f"{path}: not a readable safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    body = size - 8 - n
    for name, info in header.items():
        if not (isinstance(info, dict) and isinstance(info.get("shape"), list)
                and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
                and all(type(x) is int and x >= 0 for x in info["shape"] + info["data_offsets"])):
            raise error(f"{path}: tensor {name!r} has a malformed header entry")
        dtype = info.get("dtype")
        if dtype not in SAFETENSORS_ITEMSIZE or (dtypes is not None and dtype not in dtypes):
            allowed = ", ".join(dtypes if dtypes is not None else SAFETENSORS_ITEMSIZE)
            raise error(f"{path}: tensor {name!r} has dtype {dtype!r}; expected one of {allowed}")
        start, stop = info["data_offsets"]
        numel = 1
        for dim in info["shape"]:
            numel *= dim
        if not start <= stop <= body or stop - start != numel * SAFETENSORS_ITEMSIZE[dtype]:
            raise error(f"{path}: tensor {name!r} of shape {info['shape']} claims bytes {start}..{stop}, but the "
                        f"file holds {body} bytes of data (truncated or damaged)")
    return header
