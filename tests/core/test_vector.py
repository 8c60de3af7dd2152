import json

import pytest
import torch

from workbench.core.vector import (IncompatibleVectorError, SteeringVector, VectorFileError, full_hook_name,
                                   load_vector, parse_hook_name, valid_hook_names)


def make(d=32, layer=1, **kw):
    return SteeringVector(torch.randn(d), full_hook_name(layer), model_name="tiny-3x32", method="caa", **kw)


def test_hook_names():
    assert full_hook_name(14) == "blocks.14.hook_resid_post"
    assert full_hook_name(3, "mlp_out") == "blocks.3.hook_mlp_out"
    assert full_hook_name(3, "hook_resid_pre") == "blocks.3.hook_resid_pre"
    assert parse_hook_name("blocks.7.hook_attn_out") == (7, "hook_attn_out")
    with pytest.raises(ValueError, match="unknown hook point"):
        full_hook_name(1, "resid_middle")
    with pytest.raises(ValueError, match="not a block hook name"):
        parse_hook_name("blocks.1.attn.hook_z")


def test_layer_parsed_and_checked():
    v = make(layer=2)
    assert v.layer == 2 and v.d_model == 32 and v.hook_point == "hook_resid_post"
    with pytest.raises(ValueError, match="disagrees"):
        SteeringVector(torch.randn(4), "blocks.2.hook_resid_post", layer=3)
    with pytest.raises(ValueError, match="shape"):
        SteeringVector(torch.randn(2, 4), "blocks.2.hook_resid_post")


def test_operations_return_new_objects():
    v = make()
    original = v.vector.clone()
    w = v.scaled(2.0)
    assert torch.equal(v.vector, original) and torch.allclose(w.vector, 2 * original)
    assert torch.allclose((3 * v).vector, 3 * original) and torch.allclose((-v).vector, -original)
    assert v.normalized(5.0).norm == pytest.approx(5.0, rel=1e-5)
    s = v + w
    assert torch.allclose(s.vector, 3 * original) and s.method == "sum"
    assert torch.allclose((s - w).vector, original, atol=1e-6)
    assert v.to(dtype=torch.bfloat16).vector.dtype == torch.bfloat16
    assert v.at(0).hook_name == "blocks.0.hook_resid_post" and v.at(0).layer == 0
    with pytest.raises(ValueError, match="different hooks"):
        v + v.at(0)
    with pytest.raises(AttributeError):
        v.layer = 3  # frozen
    with pytest.raises(ValueError, match="zero vector"):
        SteeringVector(torch.zeros(4), "blocks.0.hook_resid_post").normalized()


def test_cosine():
    v = make()
    assert v.cosine(v) == pytest.approx(1.0, abs=1e-6)
    assert v.cosine(-v) == pytest.approx(-1.0, abs=1e-6)
    assert v.cosine(v.scaled(3)) == pytest.approx(1.0, abs=1e-6)
    assert v.cosine(v.vector) == pytest.approx(1.0, abs=1e-6)  # a plain tensor too


def test_save_load_round_trip(tmp_path):
    v = make(config={"lr": 0.01, "layers": (1, 2)}, data_fingerprint="abc", metadata={"behavior": "power"})
    v.save(tmp_path / "v")
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["vector.json", "vector.safetensors"]
    w = SteeringVector.load(tmp_path / "v")
    assert torch.equal(v.vector, w.vector)
    assert (w.hook_name, w.layer, w.model_name, w.method, w.data_fingerprint) == (
        v.hook_name, v.layer, v.model_name, v.method, v.data_fingerprint)
    assert w.config == {"lr": 0.01, "layers": [1, 2]} and w.metadata == {"behavior": "power"}
    # bf16 round trip keeps dtype
    b = v.to(dtype=torch.bfloat16)
    b.save(tmp_path / "b")
    assert SteeringVector.load(tmp_path / "b").vector.dtype == torch.bfloat16
    assert not list(tmp_path.rglob("*.tmp"))


def test_saved_files_get_the_usual_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        make().save(tmp_path / "v")
    finally:
        os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "v").iterdir()}
    assert modes == {"vector.json": 0o644, "vector.safetensors": 0o644}  # not mkstemp's 0600


def test_load_errors(tmp_path):
    with pytest.raises(VectorFileError, match="vector.json: missing"):
        SteeringVector.load(tmp_path)
    v = make()
    v.save(tmp_path / "v")
    meta = tmp_path / "v" / "vector.json"
    tensor = tmp_path / "v" / "vector.safetensors"
    good = meta.read_text()
    meta.write_text("{not json")
    with pytest.raises(VectorFileError, match="vector.json: not valid JSON"):
        SteeringVector.load(tmp_path / "v")
    d = json.loads(good)
    del d["hook_name"]
    meta.write_text(json.dumps(d))
    with pytest.raises(VectorFileError, match="missing field 'hook_name'"):
        SteeringVector.load(tmp_path / "v")
    meta.write_text(good)
    raw = bytearray(tensor.read_bytes())
    raw[-1] ^= 0xFF
    tensor.write_bytes(bytes(raw))
    with pytest.raises(VectorFileError, match="checksum"):
        SteeringVector.load(tmp_path / "v")
    tensor.write_bytes(b"garbage")
    d = json.loads(good)
    del d["sha256"]
    meta.write_text(json.dumps(d))
    with pytest.raises(VectorFileError, match="not a readable safetensors"):
        SteeringVector.load(tmp_path / "v")
    make(d=16).save(tmp_path / "w")
    d = json.loads((tmp_path / "w" / "vector.json").read_text())
    d["d_model"], d["sha256"] = 32, d["sha256"]
    (tmp_path / "w" / "vector.json").write_text(json.dumps(d))
    with pytest.raises(VectorFileError, match="does not match d_model 32"):
        SteeringVector.load(tmp_path / "w")


def test_compatibility(tiny_model, tmp_path):
    make().check_compatible(tiny_model)
    with pytest.raises(IncompatibleVectorError, match="d_model 16 but model"):
        make(d=16).check_compatible(tiny_model)
    with pytest.raises(IncompatibleVectorError, match="does not exist.*valid hooks: blocks.0.hook_resid_pre"):
        make(layer=7).check_compatible(tiny_model)
    make().save(tmp_path / "v")
    assert load_vector(tmp_path / "v", tiny_model).d_model == 32
    assert len(valid_hook_names(tiny_model)) == 3 * 5
