"""Fuzzed vector files (issue #19): damaged or hostile safetensors, vector.json and GGUF control vectors.

Seeded random mutations (bit flips, truncation, header-length tampering, garbage) of small valid files.
Each mutant must either load as a valid finite vector or raise the package's error (a ValueError
subclass naming the file), never another exception, a hang or a huge allocation. Bounded in count
and in time.
"""

from __future__ import annotations

import json
import random
import struct
import time
from pathlib import Path

import pytest
import torch

from workbench.core.interchange import InterchangeError, export_gguf, import_gguf, read_tensor
from workbench.core.vector import SteeringVector, VectorFileError

N_CASES = 200
TIME_LIMIT_S = 10.0


def _vector(d: int = 16, layer: int = 3) -> SteeringVector:
    return SteeringVector(torch.linspace(-1, 1, d), f"blocks.{layer}.hook_resid_post", method="caa",
                          model_name="tiny")


def _mutate(raw: bytes, rng: random.Random, header_at: int | None) -> bytes:
    """One seeded mutation: bit flips, a truncation, a tampered 8-byte length, or garbage bytes."""
    data = bytearray(raw)
    kind = rng.choice(("flip", "flips", "truncate", "length", "garbage", "splice"))
    if kind == "flip":
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    elif kind == "flips":
        for _ in range(rng.randint(2, 16)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == "truncate":
        data = data[: rng.randrange(len(data))]
    elif kind == "length" and header_at is not None:
        value = rng.choice((0, 1, len(raw), len(raw) * 2, 2**31, 2**63 - 1, 2**64 - 1, rng.randrange(2**64)))
        data[header_at:header_at + 8] = struct.pack("<Q", value)
    elif kind == "garbage":
        data = bytearray(rng.randbytes(rng.randint(0, 64)))
    else:  # a run of random bytes in the middle
        i = rng.randrange(len(data))
        data[i:i + 8] = rng.randbytes(8)
    return bytes(data)


def _check_loaded(vectors: list[SteeringVector]) -> None:
    for v in vectors:
        assert v.vector.ndim == 1 and v.vector.is_floating_point()
        assert torch.isfinite(v.vector.float()).all()


def _fuzz(make_case, load, errors, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    outcome = {"loaded": 0, "refused": 0}
    t0 = time.perf_counter()
    for i in range(N_CASES):
        path = make_case(rng, i)
        try:
            _check_loaded(load(path))
            outcome["loaded"] += 1
        except errors as exc:
            assert str(path.name) in str(exc) or str(path.parent.name) in str(exc), exc
            assert "\n" not in str(exc).strip(), exc
            outcome["refused"] += 1
        assert time.perf_counter() - t0 < TIME_LIMIT_S, f"fuzzing too slow after {i + 1} cases"
    return outcome


def test_fuzzed_safetensors_vector_directory(tmp_path):
    _vector().save(tmp_path / "good")
    raw = (tmp_path / "good" / "vector.safetensors").read_bytes()
    meta = json.loads((tmp_path / "good" / "vector.json").read_text())
    del meta["sha256"]  # without the checksum the tensor file's own parsing is what gets fuzzed

    def make(rng, i):
        d = tmp_path / f"case{i}"
        d.mkdir()
        (d / "vector.safetensors").write_bytes(_mutate(raw, rng, header_at=0))
        (d / "vector.json").write_text(json.dumps(meta))
        return d

    outcome = _fuzz(make, lambda d: [SteeringVector.load(d)], VectorFileError, seed=19)
    assert outcome["refused"] > N_CASES // 2, outcome  # most mutants are damaged, and are refused


def test_fuzzed_vector_json(tmp_path):
    _vector().save(tmp_path / "good")
    tensor = (tmp_path / "good" / "vector.safetensors").read_bytes()
    raw = (tmp_path / "good" / "vector.json").read_bytes()

    def make(rng, i):
        d = tmp_path / f"case{i}"
        d.mkdir()
        (d / "vector.safetensors").write_bytes(tensor)
        (d / "vector.json").write_bytes(_mutate(raw, rng, header_at=None))
        return d

    outcome = _fuzz(make, lambda d: [SteeringVector.load(d)], VectorFileError, seed=20)
    assert outcome["refused"] > N_CASES // 2, outcome


def test_fuzzed_bare_safetensors_tensor(tmp_path):
    from safetensors.torch import save

    raw = save({"v": torch.linspace(-1, 1, 16)})

    def make(rng, i):
        path = tmp_path / f"case{i}.safetensors"
        path.write_bytes(_mutate(raw, rng, header_at=0))
        return path

    outcome = _fuzz(make, lambda p: [SteeringVector(read_tensor(p), "blocks.1.hook_resid_post")], InterchangeError,
                    seed=21)
    assert outcome["refused"] > N_CASES // 2, outcome


def test_fuzzed_gguf_control_vector(tmp_path):
    export_gguf([_vector(layer=2), _vector(layer=5)], tmp_path / "good.gguf")
    raw = (tmp_path / "good.gguf").read_bytes()
    assert [v.layer for v in import_gguf(tmp_path / "good.gguf")] == [2, 5]

    def make(rng, i):
        path = tmp_path / f"case{i}.gguf"
        # header_at 8: GGUF's tensor count (u64 after magic and version); 16: its KV count
        path.write_bytes(_mutate(raw, rng, header_at=rng.choice((8, 16))))
        return path

    outcome = _fuzz(make, import_gguf, InterchangeError, seed=22)
    assert outcome["refused"] > N_CASES // 4, outcome


def _safetensors_with(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


@pytest.mark.parametrize("case,header,body,words", [
    ("claims more bytes than the file", {"vector": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4 << 40]}},
     b"\0" * 64, "truncated or damaged"),
    ("integer dtype", {"vector": {"dtype": "I32", "shape": [16], "data_offsets": [0, 64]}}, b"\0" * 64, "dtype 'I32'"),
    ("unknown dtype", {"vector": {"dtype": "Q4_K", "shape": [16], "data_offsets": [0, 64]}}, b"\0" * 64, "dtype 'Q4_K'"),
    ("negative shape", {"vector": {"dtype": "F32", "shape": [-16], "data_offsets": [0, 64]}}, b"\0" * 64, "malformed"),
])
def test_hostile_safetensors_refused_by_name(tmp_path, case, header, body, words):
    _vector().save(tmp_path / "v")
    meta = json.loads((tmp_path / "v" / "vector.json").read_text())
    del meta["sha256"]
    (tmp_path / "v" / "vector.json").write_text(json.dumps(meta))
    (tmp_path / "v" / "vector.safetensors").write_bytes(_safetensors_with(header, body))
    with pytest.raises(VectorFileError, match=words) as err:
        SteeringVector.load(tmp_path / "v")
    assert "vector.safetensors" in str(err.value)
    (tmp_path / "t.safetensors").write_bytes(_safetensors_with(header, body))
    with pytest.raises(InterchangeError, match="t.safetensors"):
        read_tensor(tmp_path / "t.safetensors")


@pytest.mark.parametrize("raw,words", [
    (struct.pack("<Q", 2**63) + b"{}", "header length"),
    (struct.pack("<Q", 10) + b"not json!!", "not valid JSON"),
    (b"\x01\x02", "shorter than its header length"),
])
def test_broken_safetensors_headers(tmp_path, raw, words):
    path = tmp_path / "t.safetensors"
    path.write_bytes(raw)
    with pytest.raises(InterchangeError, match=words):
        read_tensor(path)


@pytest.mark.parametrize("change,words", [
    ({"d_model": "abc"}, "field 'd_model'"),
    ({"d_model": 17}, "does not match d_model 17"),
    ({"hook_name": "blocks.3.attn.hook_z"}, "field 'hook_name'"),
    ({"hook_name": "blocks.3.hook_resid_post; rm"}, "field 'hook_name'"),
    ({"surprise": 1}, "unknown field(s) ['surprise']"),
    ({"method": "../../etc/passwd"}, "field 'method'"),
    ({"method": "a\\b"}, "field 'method'"),
    ({"layer": True}, "field 'layer'"),
    ({"config": [1, 2]}, "field 'config'"),
    ({"format_version": "1"}, "field 'format_version'"),
])
def test_bad_vector_json_fields_name_file_and_field(tmp_path, change, words):
    _vector().save(tmp_path / "v")
    meta_path = tmp_path / "v" / "vector.json"
    meta = json.loads(meta_path.read_text())
    meta.update(change)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(VectorFileError) as err:
        SteeringVector.load(tmp_path / "v")
    assert str(meta_path) in str(err.value) or "vector.safetensors" in str(err.value)
    assert words in str(err.value), err.value


def _gguf_with(tmp_path, name: str, edit) -> Path:
    """The exported control vector with its tensor-info record (n_dims u32, dim u64, type u32, offset u64) edited."""
    export_gguf(_vector(layer=2), tmp_path / "good.gguf")
    raw = bytearray((tmp_path / "good.gguf").read_bytes())
    info = raw.rindex(b"direction.2") + len(b"direction.2")  # the last: the first is in the metadata JSON
    edit(raw, info)
    (tmp_path / name).write_bytes(bytes(raw))
    return tmp_path / name


@pytest.mark.parametrize("name,edit,words", [
    ("absurd-shape.gguf", lambda r, i: struct.pack_into("<Q", r, i + 4, 1 << 40), "not a readable GGUF"),
    ("max-shape.gguf", lambda r, i: struct.pack_into("<Q", r, i + 4, 2**64 - 1), "not a readable GGUF"),
    ("many-dims.gguf", lambda r, i: struct.pack_into("<I", r, i, 1000), "not a readable GGUF"),
    ("two-dims.gguf", lambda r, i: struct.pack_into("<I", r, i, 2), "control vectors are 1-D"),
    ("unknown-type.gguf", lambda r, i: struct.pack_into("<I", r, i + 12, 99), "not a valid GGMLQuantizationType"),
    ("quantized.gguf", lambda r, i: struct.pack_into("<I", r, i + 12, 2), "Q4_0"),
    ("offset-past-end.gguf", lambda r, i: struct.pack_into("<Q", r, i + 16, 1 << 50), "not a readable GGUF"),
    ("truncated.gguf", lambda r, i: r.__delitem__(slice(len(r) - 20, None)), "not a readable GGUF"),
    ("garbage.gguf", lambda r, i: r.__setitem__(slice(4, None), bytes(len(r) - 4)), "not a readable GGUF"),
])
def test_hostile_gguf_refused_by_name(tmp_path, name, edit, words):
    path = _gguf_with(tmp_path, name, edit)
    with pytest.raises(InterchangeError, match=words) as err:
        import_gguf(path)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_pickled_pt_refused_without_warning(tmp_path, recwarn):
    import pickle

    (tmp_path / "vec_layer3.pt").write_bytes(pickle.dumps({"v": [1.0, 2.0]}, protocol=4))
    with pytest.raises(InterchangeError, match="vec_layer3.pt: refused"):
        read_tensor(tmp_path / "vec_layer3.pt")
    assert not [w for w in recwarn if "pickle" in str(w.message)], [str(w.message) for w in recwarn]
