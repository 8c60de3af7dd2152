"""One writer per artifact, and multi-file artifacts committed whole (issue #30).

**One writer per artifact.** ``artifact_lock(path)`` holds an exclusive ``flock`` on a lock file beside
the artifact (``.NAME.lock``, holding the writer's pid, removed when released); a second writer waits
up to ``wait`` seconds, then gets an ``ArtifactBusyError`` naming the other process. Readers take the
same lock shared where they can (``artifact_read_lock``), so they never read while a writer commits.

**Multi-file artifacts** (a vector and its metadata and history, a checkpoint) are written by
``write_artifact``: every file goes into a fresh staging directory, and ONE directory rename (the
staging directory to ``DIR/.commit``) is the commit point; the files are then moved into place and a
kill during that move is rolled forward by the next writer or reader. A full disk, a permission error
or a kill before the commit point leaves the old artifact untouched; after it, the whole new one.
Disk errors name the path they were writing (``workbench.core.io``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from workbench.core.io import _fsync_dir, _naming, _umask, recover_files

logger = logging.getLogger(__name__)

LOCK_WAIT = 30.0  # seconds a writer waits for another one's lock before giving up (a save takes milliseconds)
# --------------------------------------------------------------------------- one writer per artifact


COMMIT_DIR = ".commit"  # DIR/.commit: a committed artifact's files not yet moved into place


_STAGING = ".staging-"  # DIR/.staging-XXXX: an artifact being written (discarded unless committed)


class ArtifactBusyError(RuntimeError):
    """Another process (or thread) holds the lock of the artifact being written."""


class _Held:
    def __init__(self, fd: int, thread: int) -> None:
        self.fd, self.thread, self.count = fd, thread, 1


_held: dict[str, _Held] = {}  # lock file -> this process's hold on it (reentrant within a thread)


_held_cond = threading.Condition()


def lock_path(path: str | Path) -> Path:
    """The lock file of the artifact at ``path``: ``.NAME.lock`` beside it."""
    path = Path(path).absolute()
    return path.with_name(f".{path.name}.lock")


def _holder(lock: Path) -> str:
    try:
        pid = lock.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "a reader"


def _try_flock(lock: Path, mode: int) -> int | None:
    """An open fd on ``lock`` holding ``mode`` (LOCK_EX or LOCK_SH), or None when another process holds it.

    The lock file is removed by whoever releases it last, so after locking, the fd must still be the
    file at ``lock`` (else it was removed meanwhile: try again on the new one)."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _release(lock: Path, fd: int) -> None:
    try:  # the last holder removes the file (a reader may still hold it shared: then it stays)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(lock).st_ino == os.fstat(fd).st_ino:
            lock.unlink()
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def artifact_lock(path: str | Path, wait: float = LOCK_WAIT) -> Iterator[Path]:
    """Hold the one-writer lock of the artifact at ``path`` (a file or a directory) for the block.

    The lock is an exclusive ``flock`` on ``.NAME.lock`` beside the artifact, holding this process's
    pid; the kernel drops it if the process dies, and the file is removed when released. It is
    reentrant within a thread (``SteeringVector.save`` inside a run that holds its output's lock).

    Args:
        path: the artifact.
        wait: seconds to wait for another writer (0: fail at once).

    Raises:
        ArtifactBusyError: another process (its pid named) or thread still holds it after ``wait``.
    """
    lock = lock_path(path)
    key, me = str(lock), threading.get_ident()
    deadline = time.monotonic() + wait
    with _held_cond:  # threads of this process: reentrant for the holder, others wait
        while key in _held and _held[key].thread != me:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ArtifactBusyError(f"{path}: being written by another thread of this process "
                                        f"(pid {os.getpid()}); wait for it to finish")
            _held_cond.wait(min(left, 0.05))
        if key in _held:
            _held[key].count += 1
            fd = None
        else:
            _held[key] = _Held(-1, me)  # reserved while this thread takes the file lock
            fd = -1
    if fd == -1:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            delay = 0.001
            while (fd := _try_flock(lock, fcntl.LOCK_EX)) is None:
                if time.monotonic() >= deadline:
                    raise ArtifactBusyError(
                        f"{path}: being written by another process ({_holder(lock)}, lock file {lock}); "
                        "wait for it to finish or write elsewhere")
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException as exc:
            with _held_cond:
                del _held[key]
                _held_cond.notify_all()
            if isinstance(exc, OSError):
                named = _naming(exc, lock)
                if named is not exc:
                    raise named from exc
            raise
        with _held_cond:
            _held[key].fd = fd
    try:
        yield lock
    finally:
        with _held_cond:
            held = _held[key]
            held.count -= 1
            if held.count == 0:
                del _held[key]
                with contextlib.suppress(OSError):
                    os.ftruncate(held.fd, 0)
                _release(lock, held.fd)
                _held_cond.notify_all()


@contextlib.contextmanager
def artifact_read_lock(path: str | Path, wait: float = LOCK_WAIT) -> Iterator[bool]:
    """Hold the artifact's lock shared while reading it, so no writer commits meanwhile; yields whether
    it is held. A thread that holds the write lock reads under it; where no lock file can be made (a
    read-only directory) the read goes ahead unlocked (yields False). Raises ``ArtifactBusyError``
    after ``wait`` seconds of a writer holding it."""
    lock = lock_path(path)
    with _held_cond:
        mine = str(lock) in _held and _held[str(lock)].thread == threading.get_ident()
    if mine:
        yield True
        return
    deadline = time.monotonic() + wait
    fd: int | None = None
    try:
        delay = 0.001
        while (fd := _try_flock(lock, fcntl.LOCK_SH)) is None:
            if time.monotonic() >= deadline:
                raise ArtifactBusyError(f"{path}: being written by another process ({_holder(lock)}); "
                                        "try again when it has finished")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    except OSError as exc:  # no lock file can be made here (read-only, or no such directory): read unlocked
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR):
            raise
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        _release(lock, fd)


def recover_artifact(directory: str | Path, names: Sequence[str] = ()) -> None:
    """Finish an interrupted commit of ``write_artifact`` in ``directory`` (``.commit`` rolled forward),
    discard staging directories of killed writes, and recover the older two-file protocol's ``names``.

    Call it holding the artifact's lock (``artifact_lock`` or ``artifact_read_lock``): then no write is live.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return
    try:
        if (directory / COMMIT_DIR).is_dir():
            logger.warning("%s: completing an interrupted write", directory)
            _roll_forward(directory)
        for stale in directory.glob(f"{_STAGING}*"):
            shutil.rmtree(stale, ignore_errors=True)
    except OSError as exc:  # a read-only directory: leave it as it is
        logger.warning("%s: cannot clean up an interrupted write (%s)", directory, exc)
    if names:
        recover_files(directory, names)


def _roll_forward(directory: Path) -> None:
    commit = directory / COMMIT_DIR
    for f in sorted(commit.iterdir()):
        os.replace(f, directory / f.name)
    commit.rmdir()
    _fsync_dir(directory)


def write_artifact(directory: str | Path, files: Mapping[str, Callable[[Path], None]], *,
                   wait: float = LOCK_WAIT, legacy_names: Sequence[str] = ()) -> Path:
    """Write the files of one artifact into ``directory`` together: all of them or none.

    Each ``files[name](path)`` writes one file at ``path`` in a fresh staging directory (in the order
    given: a later writer may read an earlier file, e.g. to record its checksum); the staging directory
    is then renamed to ``DIR/.commit`` (the commit point: one directory rename) and its files moved
    over the old ones. Other files of ``directory`` are left alone. Holds ``artifact_lock(directory)``.

    Raises:
        ArtifactBusyError: another writer holds the artifact.
        OSError: a full disk or a permission error, naming the path; the old artifact is untouched.
    """
    directory = Path(directory)
    with artifact_lock(directory, wait):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _naming(exc, directory) from exc
        recover_artifact(directory, legacy_names)
        try:
            stage = Path(tempfile.mkdtemp(prefix=_STAGING, dir=directory))
        except OSError as exc:
            raise _naming(exc, directory) from exc
        target = directory
        try:
            os.chmod(stage, 0o777 & ~_umask())
            for name, write in files.items():
                target = directory / name
                write(stage / name)
                with open(stage / name, "rb") as f:
                    os.fsync(f.fileno())
            target = directory
            _fsync_dir(stage)
            os.rename(stage, directory / COMMIT_DIR)  # the commit point
            _fsync_dir(directory)
        except BaseException as exc:
            shutil.rmtree(stage, ignore_errors=True)
            if isinstance(exc, OSError):
                named = _naming(exc, target)
                if named is not exc:
                    raise named from exc
            raise
        try:
            _roll_forward(directory)
        except OSError as exc:  # committed: the next writer or reader completes it
            raise _naming(exc, directory) from exc
    return directory


