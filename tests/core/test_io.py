"""Atomic writes, two-file commits and the safetensors header check (workbench.core.io)."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from safetensors.torch import load_file

from workbench.core.io import (atomic_write_json, atomic_write_safetensors, clean_stale_temporaries, commit_files,
                               pending, read_safetensors_header, recover_files)


def test_json_and_safetensors_round_trip_and_leave_no_temporary(tmp_path):
    atomic_write_json({"dtype": torch.bfloat16, "x": torch.tensor(2.5), "path": tmp_path}, tmp_path / "a.json")
    assert json.loads((tmp_path / "a.json").read_text()) == {"dtype": "bfloat16", "x": 2.5, "path": str(tmp_path)}
    with pytest.raises(ValueError):
        atomic_write_json({"x": math.nan}, tmp_path / "b.json")
    t = torch.arange(6.0).reshape(2, 3).T  # not contiguous
    atomic_write_safetensors({"t": t}, tmp_path / "t.safetensors", metadata={"k": "v"})
    assert torch.equal(load_file(tmp_path / "t.safetensors")["t"], t)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "t.safetensors"]


def test_a_kill_between_renames_is_rolled_forward_and_orphans_removed(tmp_path):
    for name, text in (("data", "new data"), ("meta", "new meta")):
        pending(tmp_path / name).write_text(text)
    (tmp_path / ".data.1234.tmp").write_text("orphan of a killed write")
    recover_files(tmp_path, ("data", "meta"))  # the last name's staged copy exists: committed
    assert (tmp_path / "data").read_text() == "new data" and (tmp_path / "meta").read_text() == "new meta"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "meta"]
    pending(tmp_path / "data").write_text("half")  # no staged "meta": the write never committed
    recover_files(tmp_path, ("data", "meta"))
    assert (tmp_path / "data").read_text() == "new data" and not pending(tmp_path / "data").exists()
    commit_files(tmp_path, ("data", "meta"))  # nothing staged: nothing changes
    assert clean_stale_temporaries(tmp_path / "data") == []


def test_safetensors_header_is_checked_against_the_file(tmp_path):
    path = tmp_path / "w.safetensors"
    atomic_write_safetensors({"w": torch.zeros(4, 2)}, path)
    assert read_safetensors_header(path)["w"] == {"dtype": "F32", "shape": [4, 2], "data_offsets": [0, 32]}
    with pytest.raises(KeyError, match="expected one of BF16"):
        read_safetensors_header(path, KeyError, dtypes=("BF16",))
    raw = path.read_bytes()
    path.write_bytes(raw[:-4])
    with pytest.raises(ValueError, match="truncated or damaged"):
        read_safetensors_header(path)
    path.write_bytes(struct.pack("<Q", 10**9) + raw[8:])
    with pytest.raises(ValueError, match="exceeds the file"):
        read_safetensors_header(path)
