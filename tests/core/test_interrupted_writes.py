"""Interrupted writes (issue #19; ``workbench.core.io`` and ``SteeringVector.save``): a kill at any moment leaves
each artifact whole (old or new), never mixed."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from workbench.core import io as wio
from workbench.core.io import atomic_write_json, clean_stale_temporaries
from workbench.core.vector import SteeringVector


def _vec(i: float, d: int = 16) -> SteeringVector:
    return SteeringVector(torch.full((d,), float(i)), "blocks.0.hook_resid_post", method="caa")


def test_kill_between_the_two_files_rolls_forward(tmp_path, monkeypatch):
    _vec(1).save(tmp_path)
    real = os.replace
    calls = []

    def replace_then_die(src, dst):
        real(src, dst)
        calls.append(dst)
        if Path(dst).name == "vector.safetensors":  # "killed" after the first of the two renames
            raise KeyboardInterrupt

    monkeypatch.setattr(wio.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        _vec(2).save(tmp_path)
    monkeypatch.setattr(wio.os, "replace", real)
    assert SteeringVector.load(tmp_path).vector[0].item() == 2.0  # committed: completed on load
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vector.json", "vector.safetensors"]


def test_kill_before_the_commit_point_keeps_the_old_vector(tmp_path, monkeypatch):
    _vec(1).save(tmp_path)

    def die(src, dst):  # the one directory rename that commits the staged files
        raise KeyboardInterrupt

    monkeypatch.setattr(wio.os, "rename", die)
    with pytest.raises(KeyboardInterrupt):
        _vec(2).save(tmp_path, extra={"history.json": {"history": []}})
    monkeypatch.undo()
    assert SteeringVector.load(tmp_path).vector[0].item() == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vector.json", "vector.safetensors"]


def _disk_full_on(monkeypatch, name: str) -> None:
    """``os.fsync`` of the staged file ``name`` fails as on a full disk (no file name, as the kernel says it)."""
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/" + name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(wio.os, "fsync", fsync)


@pytest.mark.parametrize("full_at", ["vector.safetensors", "history.json", "vector.json"])
def test_a_full_disk_leaves_the_old_vector_and_history_and_names_the_path(tmp_path, full_at, monkeypatch):
    """Issue #30: a BiPO vector could be committed without its history.json when the disk filled between them."""
    _vec(1).save(tmp_path, extra={"history.json": {"history": [1]}})
    _disk_full_on(monkeypatch, full_at)
    with pytest.raises(OSError) as caught:
        _vec(2).save(tmp_path, extra={"history.json": {"history": [2]}})
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / full_at)
    assert str(tmp_path / full_at) in str(caught.value)
    assert SteeringVector.load(tmp_path).vector[0].item() == 1.0  # the old pair, and its history
    assert json.loads((tmp_path / "history.json").read_text()) == {"history": [1]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json", "vector.json", "vector.safetensors"]
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.lock"))  # the lock is released and removed
    _vec(3).save(tmp_path, extra={"history.json": {"history": [3]}})  # the next write goes through whole
    assert SteeringVector.load(tmp_path).vector[0].item() == 3.0
    assert json.loads((tmp_path / "history.json").read_text()) == {"history": [3]}


def test_a_full_disk_in_a_single_file_write_names_the_path(tmp_path, monkeypatch):
    atomic_write_json({"i": 1}, tmp_path / "r.json")

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(wio.os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left on device") as caught:
        atomic_write_json({"i": 2}, tmp_path / "r.json")
    monkeypatch.undo()
    assert caught.value.filename == str(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"i": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_companion_file_names_are_checked(tmp_path):
    for bad in ("vector.json", "../x.json", ".hidden", ""):
        with pytest.raises(ValueError, match="companion file"):
            _vec(1).save(tmp_path / "v", extra={bad: {}})
    with pytest.raises(ValueError):  # NaN refused before anything is written
        _vec(1).save(tmp_path / "v", extra={"h.json": {"x": float("nan")}})
    assert not (tmp_path / "v").exists() or not any((tmp_path / "v").iterdir())


def test_nan_vector_refused_on_save(tmp_path):
    v = SteeringVector(torch.tensor([1.0, float("nan")]), "blocks.0.hook_resid_post", method="caa")
    with pytest.raises(ValueError, match="NaN"):
        v.save(tmp_path / "v")
    assert not (tmp_path / "v").exists() or not any((tmp_path / "v").iterdir())


def test_stray_temporaries_cleaned_but_live_ones_kept(tmp_path):
    import fcntl

    target = tmp_path / "r.json"
    stray = tmp_path / ".r.json.abc123.tmp"
    stray.write_text("half")
    live = tmp_path / ".r.json.live99.tmp"
    live.write_text("writing")
    with open(live, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        assert clean_stale_temporaries(target) == [stray]
    assert live.exists() and not stray.exists()
    atomic_write_json({"a": 1}, target)
    assert target.exists()


_WRITER = """
import sys, torch
from workbench.core.vector import SteeringVector
from workbench.core.io import atomic_write_json
out = sys.argv[1]
print("ready", flush=True)
i = 0
while True:
    i += 1
    SteeringVector(torch.full((4096,), float(i)), "blocks.0.hook_resid_post", method="caa").save(out + "/vec")
    atomic_write_json({"i": i, "pad": list(range(2000))}, out + "/result.json")
"""


def test_sigkill_at_random_moments_leaves_whole_artifacts(tmp_path):
    rng = random.Random(19)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    for _ in range(4):  # bounded: four kills at seeded random moments
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (tmp_path / "vec" / "vector.json").exists() or (tmp_path / "vec" / ".vector.json.new").exists():
            v = SteeringVector.load(tmp_path / "vec")  # whole: old or new, checksums agree
            assert torch.all(v.vector == v.vector[0]) and v.vector[0] >= 1
        if (tmp_path / "result.json").exists():
            assert "i" in json.loads((tmp_path / "result.json").read_text())
    # the next write cleans what killed writes left
    _vec(7).save(tmp_path / "vec")
    atomic_write_json({"i": 0}, tmp_path / "result.json")
    leftovers = [p.name for p in tmp_path.rglob(".*")]
    assert leftovers == [], leftovers
