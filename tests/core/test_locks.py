"""One writer per artifact (issue #30, item 3; ``workbench.core.artifacts.artifact_lock`` and ``write_artifact``):
a second writer waits or gets an error naming the first's pid, concurrent saves never fail or mix, and
a concurrent reader never sees a pair whose checksums disagree."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from workbench.core.artifacts import ArtifactBusyError, artifact_lock, lock_path, write_artifact
from workbench.core.vector import SteeringVector

_ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}

_HOLDER = """
import sys, time
from workbench.core.artifacts import artifact_lock
with artifact_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def holder(tmp_path):
    """A second process holding the lock of ``tmp_path / "vec"`` until the test ends."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / "vec")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=_ENV)
    assert proc.stdout.readline().strip() == b"locked"
    yield proc
    proc.stdin.close()
    proc.wait(timeout=60)


def test_a_second_writer_is_refused_naming_the_first_ones_pid(tmp_path, holder):
    with pytest.raises(ArtifactBusyError, match=rf"{tmp_path / 'vec'}: being written by another process "
                                                rf"\(pid {holder.pid}, lock file "), \
            artifact_lock(tmp_path / "vec", wait=0):
        pass
    with pytest.raises(ArtifactBusyError, match=f"pid {holder.pid}"):
        write_artifact(tmp_path / "vec", {"a.txt": lambda p: p.write_text("x")}, wait=0.05)
    assert not (tmp_path / "vec" / "a.txt").exists()


def test_the_lock_is_reentrant_in_a_thread_exclusive_across_threads_and_removed_when_released(tmp_path):
    target = tmp_path / "vec"
    errors = []
    with artifact_lock(target) as lock:
        assert lock == lock_path(target) and lock.read_text().strip() == str(os.getpid())
        with artifact_lock(target, wait=0):  # the same thread again: fine (a save inside a locked run)
            SteeringVector(torch.ones(4), "blocks.0.hook_resid_post").save(target)

        def other():
            try:
                with artifact_lock(target, wait=0):
                    pass
            except ArtifactBusyError as exc:
                errors.append(str(exc))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert lock.exists()
    assert len(errors) == 1 and f"another thread of this process (pid {os.getpid()})" in errors[0]
    assert not lock_path(target).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vec"]


_SAVER = """
import sys, torch
from workbench.core.vector import SteeringVector
out, tag, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
for i in range(n):  # each vector constant, its value unique: tag * 1000 + i
    SteeringVector(torch.full((512,), tag * 1000 + i), "blocks.0.hook_resid_post", method="caa").save(out)
print("done", flush=True)
"""

_READER = """
import sys, torch
from workbench.core.vector import SteeringVector, VectorFileError
out = sys.argv[1]
print("ready", flush=True)
sys.stdin.readline()
reads = 0
while True:
    v = SteeringVector.load(out)  # raises on a checksum mismatch or a missing file
    assert torch.all(v.vector == v.vector[0]), "a mixed vector"
    reads += 1
    if v.vector[0].item() == -1:
        break
print("reads", reads, flush=True)
"""


def test_two_writers_of_300_saves_and_a_reader_on_one_directory(tmp_path):
    """Issue #30: 2 x 300 concurrent saves failed 27-41 times each (FileNotFoundError) and a reader saw
    134 checksum mismatches. Now every save succeeds and every read is a whole pair."""
    out = tmp_path / "vec"
    SteeringVector(torch.zeros(512), "blocks.0.hook_resid_post", method="caa").save(out)
    procs = [subprocess.Popen([sys.executable, "-c", _SAVER, str(out), str(tag), "300"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_ENV) for tag in (1, 2)]
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_ENV)
    for p in [*procs, reader]:
        assert p.stdout.readline().strip() == b"ready"
    for p in [*procs, reader]:  # all three start together
        p.stdin.write(b"go\n")
        p.stdin.flush()
    for p in procs:
        out_, err = p.communicate(timeout=600)
        assert p.returncode == 0 and out_.strip() == b"done", err.decode()[-2000:]
    SteeringVector(torch.full((512,), -1.0), "blocks.0.hook_resid_post", method="caa").save(out)  # stops the reader
    out_, err = reader.communicate(timeout=600)
    assert reader.returncode == 0, err.decode()[-2000:]
    assert int(out_.split()[-1]) >= 1
    last = SteeringVector.load(out)
    assert last.vector[0].item() == -1
    assert sorted(p.name for p in out.iterdir()) == ["vector.json", "vector.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vec"]  # no lock file left behind
