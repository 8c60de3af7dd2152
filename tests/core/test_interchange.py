import ast
import hashlib
import os
import pickle
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from workbench.cli.main import main
from workbench.core.interchange import (GGUF_ARCH, InterchangeError, export_gguf, gguf_layer, hook_for_gguf_layer,
                                        import_bipo_vector, import_gguf, import_vector, read_any, read_tensor,
                                        write_any)
from workbench.core.vector import SteeringVector, full_hook_name
from workbench.engine.steering import remaining_hooks, steer

D = 32


def vec(layer=1, point="resid_post", d=D, **kw):
    return SteeringVector(torch.randn(d), full_hook_name(layer, point), model_name="tiny-3x32", **kw)


# --------------------------------------------------------------------------- layer mapping
def test_layer_mapping():
    assert gguf_layer("blocks.1.hook_resid_post") == 1
    assert gguf_layer("blocks.15.hook_resid_post") == 15
    assert gguf_layer("blocks.16.hook_resid_pre") == 15  # the same point as blocks.15.hook_resid_post
    assert hook_for_gguf_layer(15) == "blocks.15.hook_resid_post"
    for name in ("blocks.3.hook_attn_out", "blocks.3.hook_mlp_out", "blocks.3.hook_resid_mid"):
        with pytest.raises(InterchangeError, match="hook_resid_post"):
            gguf_layer(name)
    for name in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.0.hook_resid_pre"):
        with pytest.raises(InterchangeError, match="no control-vector slot"):
            gguf_layer(name)


# --------------------------------------------------------------------------- GGUF
def test_gguf_round_trip_single(tmp_path):
    v = vec(2, method="bipo", config={"lr": 0.01}, data_fingerprint="abc", metadata={"behavior": "power-seeking"})
    path = export_gguf(v, tmp_path / "cv.gguf")
    [w] = import_gguf(path)
    assert torch.equal(w.vector, v.vector) and w.vector.dtype == torch.float32
    assert w.hook_name == v.hook_name and w.layer == 2
    assert (w.method, dict(w.config), w.data_fingerprint, w.model_name) == ("bipo", {"lr": 0.01}, "abc", "tiny-3x32")
    assert w.metadata["behavior"] == "power-seeking" and w.metadata["gguf_tensor"] == "direction.2"
    assert w.metadata["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left nothing behind


def test_gguf_file_layout_is_what_llama_cpp_and_repeng_read(tmp_path):
    path = export_gguf([vec(1), vec(2)], tmp_path / "cv.gguf", model_hint="llama")
    r = gguf.GGUFReader(str(path))
    assert r.get_field("general.architecture").contents() == GGUF_ARCH
    hint, count = r.get_field("controlvector.model_hint"), r.get_field("controlvector.layer_count")
    assert hint.contents() == "llama" and hint.types == [gguf.GGUFValueType.STRING]
    assert count.contents() == 2 and count.types == [gguf.GGUFValueType.UINT32]
    assert [t.name for t in r.tensors] == ["direction.1", "direction.2"]
    for t in r.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [D]


def test_gguf_multi_layer_round_trip_and_resid_pre(tmp_path):
    vs = [vec(1), SteeringVector(torch.randn(D), "blocks.3.hook_resid_pre")]
    back = import_gguf(export_gguf(vs, tmp_path / "cv.gguf"))
    assert [w.hook_name for w in back] == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    assert torch.equal(back[0].vector, vs[0].vector) and torch.equal(back[1].vector, vs[1].vector)


def test_gguf_export_refusals(tmp_path):
    with pytest.raises(InterchangeError, match="hook_mlp_out cannot be exported"):
        export_gguf(vec(1, "mlp_out"), tmp_path / "a.gguf")
    with pytest.raises(InterchangeError, match="output of block 0"):
        export_gguf(vec(0), tmp_path / "a.gguf")
    with pytest.raises(InterchangeError, match="both map to direction.2"):
        export_gguf([vec(2), vec(3, "resid_pre")], tmp_path / "a.gguf")
    with pytest.raises(InterchangeError, match="different d_model"):
        export_gguf([vec(1), vec(2, d=16)], tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()


def _write_gguf(path, tensors, arch=GGUF_ARCH, hint="llama"):
    """A GGUF written the way repeng's ControlVector.export_gguf does (no workbench metadata)."""
    w = gguf.GGUFWriter(str(path), arch)
    if hint is not None:
        w.add_string(f"{arch}.model_hint", hint)
    w.add_uint32(f"{arch}.layer_count", len(tensors))
    for name, t in tensors.items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_import_foreign_repeng_style_gguf(tmp_path):
    dirs = {f"direction.{k}": np.random.randn(D).astype(np.float32) for k in (5, 1, 3)}
    vs = import_gguf(_write_gguf(tmp_path / "repeng.gguf", dirs))
    assert [v.layer for v in vs] == [1, 3, 5]
    assert all(v.method == "imported" and v.model_name == "llama" and v.hook_point == "hook_resid_post" for v in vs)
    assert np.array_equal(vs[2].vector.numpy(), dirs["direction.5"])
    assert import_gguf(tmp_path / "repeng.gguf", model_name="mine")[0].model_name == "mine"


def test_gguf_bad_input(tmp_path):
    p = _write_gguf(tmp_path / "model.gguf", {"token_embd.weight": np.zeros((4, D), np.float32)}, arch="llama")
    with pytest.raises(InterchangeError, match=r"model.gguf: no control-vector tensors"):
        import_gguf(p)
    p = _write_gguf(tmp_path / "twod.gguf", {"direction.1": np.zeros((2, D), np.float32)})
    with pytest.raises(InterchangeError, match=r"twod.gguf: tensor direction.1 has shape"):
        import_gguf(p)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(InterchangeError, match=r"junk.gguf: not a readable GGUF"):
        import_gguf(tmp_path / "junk.gguf")
    p = export_gguf(vec(1), tmp_path / "ok.gguf")
    with pytest.raises(InterchangeError, match=r"ok.gguf: vector has d_model 32, expected 64"):
        import_gguf(p, d_model=64)


def test_llama_cpp_semantics_parity(tmp_path, tiny_model):
    """Emulate llama.cpp's loader and graph on the exported file: the same logits as ``steer``.

    common_control_vector_load_one: direction.N -> data[(N-1)*n_embd]; llama_adapter_cvec::apply:
    tensors[il] <- data[(il-1)*n_embd] for il >= 1; build_cvec(cur, il) adds tensors[il] to the output
    of layer il.
    """
    vs = [vec(2).scaled(3.0), SteeringVector(3 * torch.randn(D), "blocks.2.hook_resid_pre")]  # -> direction.2, .1
    path = export_gguf(vs, tmp_path / "cv.gguf")
    n_layer, n_embd = tiny_model.cfg.n_layers, tiny_model.cfg.d_model
    data = np.zeros(n_embd * (n_layer - 1), np.float32)
    for t in gguf.GGUFReader(str(path)).tensors:
        n = int(t.name.split(".")[1])
        data[n_embd * (n - 1): n_embd * n] += t.data
    tensors = {il: torch.from_numpy(data[n_embd * (il - 1): n_embd * il].copy()) for il in range(1, n_layer)}
    hooks = [(f"blocks.{il}.hook_resid_post", lambda act, hook, t=t: act + t) for il, t in tensors.items()]
    tokens = torch.tensor([[5, 40, 70, 33, 12, 9]])
    llama_cpp = tiny_model.run_with_hooks(tokens, fwd_hooks=hooks)
    with steer(tiny_model, import_gguf(path)):
        imported = tiny_model(tokens)
    with steer(tiny_model, vs):
        original = tiny_model(tokens)
    plain = tiny_model(tokens)
    assert remaining_hooks(tiny_model) == 0
    assert not torch.allclose(plain, original, atol=1e-3)
    torch.testing.assert_close(imported, llama_cpp)
    torch.testing.assert_close(original, llama_cpp)


# --------------------------------------------------------------------------- official BiPO and plain tensors
def test_import_bipo_vector(tmp_path, tiny_model):
    t = torch.nn.Parameter(torch.randn(D))  # the official BlockWrapper saves its nn.Parameter
    path = tmp_path / "vec_ep20_layer15.pt"
    torch.save(t, path)
    v = import_bipo_vector(path, "meta-llama/Llama-2-7b-chat-hf", d_model=D)
    assert v.hook_name == "blocks.15.hook_resid_post" and v.method == "imported"
    assert torch.equal(v.vector, t.detach()) and not v.vector.requires_grad
    assert v.config["epoch"] == 20 and v.model_name == "meta-llama/Llama-2-7b-chat-hf"
    assert v.metadata["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert v.metadata["source_file"].endswith("vec_ep20_layer15.pt")
    assert import_bipo_vector(path, layer=2, model=tiny_model).hook_name == "blocks.2.hook_resid_post"
    with pytest.raises(InterchangeError, match=r"vec_ep20_layer15.pt: .*does not exist in model"):
        import_bipo_vector(path, model=tiny_model)  # the tiny model has 3 layers
    assert read_any(path)[0].config["epoch"] == 20


def test_import_plain_tensors(tmp_path):
    t = torch.randn(D)
    np.save(tmp_path / "v.npy", t.numpy())
    v = import_vector(tmp_path / "v.npy", "blocks.2.hook_resid_pre")
    assert torch.equal(v.vector, t) and v.hook_name == "blocks.2.hook_resid_pre"
    assert v.metadata["source_format"] == "npy"
    np.savez(tmp_path / "caa_layer1.npz", a=t.numpy(), b=np.zeros(D, np.float32))
    with pytest.raises(InterchangeError, match=r"caa_layer1.npz: holds 2 tensors"):
        import_vector(tmp_path / "caa_layer1.npz")
    v = import_vector(tmp_path / "caa_layer1.npz", key="a")
    assert v.layer == 1 and torch.equal(v.vector, t) and v.metadata["source_key"] == "a"
    from safetensors.torch import save_file

    save_file({"steer": t}, str(tmp_path / "s.safetensors"))
    assert torch.equal(import_vector(tmp_path / "s.safetensors", layer=1).vector, t)
    torch.save({"vec": t.to(torch.bfloat16)}, tmp_path / "d.pt")
    v = import_vector(tmp_path / "d.pt", "mlp_out", layer=0)
    assert v.vector.dtype == torch.bfloat16 and v.hook_name == "blocks.0.hook_mlp_out"
    torch.save({"a": t, "b": t}, tmp_path / "two.pt")
    with pytest.raises(InterchangeError, match=r"two.pt: holds 2 tensors"):
        read_tensor(tmp_path / "two.pt")
    assert torch.equal(read_tensor(tmp_path / "two.pt", key="b"), t)
    with pytest.raises(InterchangeError, match=r"v.npy: give the layer"):
        import_vector(tmp_path / "v.npy")


def test_bad_tensor_files(tmp_path):
    cases = {
        "list.pt": lambda p: torch.save([torch.randn(D)], p),
        "matrix.pt": lambda p: torch.save(torch.randn(2, D), p),
        "ints.npy": lambda p: np.save(p, np.arange(D)),
        "nan.npy": lambda p: np.save(p, np.full(D, np.nan, np.float32)),
        "objects.npy": lambda p: np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True),
        "mixed.pt": lambda p: torch.save({"v": torch.randn(D), "step": 3}, p),
        "junk.pt": lambda p: Path(p).write_bytes(b"\x00junk"),
        "junk.safetensors": lambda p: Path(p).write_bytes(b"junk"),
        "notes.txt": lambda p: Path(p).write_text("0.1 0.2"),
    }
    expected = {"list.pt": "expected a tensor, found list", "matrix.pt": r"1-D .* shape \(2, 32\)",
                "ints.npy": "floating-point", "nan.npy": "NaN", "objects.npy": "refused: Object arrays",
                "mixed.pt": r"entries \['step'\] are not tensors", "junk.pt": "refused: torch.load",
                "junk.safetensors": "not a readable safetensors", "notes.txt": "unknown tensor file type"}
    for name, make in cases.items():
        make(tmp_path / name)
        with pytest.raises(InterchangeError, match=f"{name}: .*{expected[name]}"):
            read_tensor(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        read_tensor(tmp_path / "missing.pt")


class _Payload:
    """A pickle that runs a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _OpenPayload:
    """A pickle that creates a file when unpickled (no shell)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("payload", [_Payload, _OpenPayload])
@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle", "raw-pickle-protocol-2", "inside-dict"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload, container):
    marker = tmp_path / "PWNED"
    path = tmp_path / "vec_ep1_layer1.pt"
    if container == "torch-zip":
        torch.save(payload(marker), path)
    elif container == "inside-dict":
        torch.save({"vector": torch.randn(D), "extra": payload(marker)}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload(marker), f, protocol=2 if container.endswith("2") else 4)
    assert not marker.exists()
    with pytest.raises(InterchangeError, match=r"vec_ep1_layer1.pt: refused: .*weights_only=True"):
        read_any(path)
    assert main(["convert", str(path), str(tmp_path / "out")]) == 2
    assert not marker.exists() and not (tmp_path / "out").exists()


_PICKLERS = ("pickle", "_pickle", "dill", "cloudpickle", "joblib")


def _unpickling_problems(source: str, where: str) -> list[str]:
    """Lines of ``source`` that import a pickler, call torch.load without weights_only=True, or np.load
    without allow_pickle=False."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        at = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            problems += [f"{at}: import {a.name}" for a in node.names if a.name.split(".")[0] in _PICKLERS]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _PICKLERS:
            problems.append(f"{at}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            kw = {k.arg: k.value for k in node.keywords}

            def is_const(arg, value):
                return isinstance(kw.get(arg), ast.Constant) and kw[arg].value is value

            if (name == "torch.load" or name.endswith(".torch.load")) and not is_const("weights_only", True):
                problems.append(f"{at}: {ast.unparse(node)[:80]} without weights_only=True")
            if name.endswith(("np.load", "numpy.load")) and not is_const("allow_pickle", False):
                problems.append(f"{at}: {ast.unparse(node)[:80]} without allow_pickle=False")
            if name.endswith(("read_pickle", "pickle.load", "pickle.loads", "Unpickler")):
                problems.append(f"{at}: {ast.unparse(node)[:80]}")
    return problems


def test_unpickling_scanner_catches_offenders():
    bad = ("import pickle\nfrom dill import loads\nimport torch, numpy as np\nx = torch.load(p)\n"
           "y = torch.load(p, weights_only=False)\nz = np.load(p)\nw = pd.read_pickle(p)\n")
    assert len(_unpickling_problems(bad, "bad.py")) == 6
    good = "import torch, numpy as np\nx = torch.load(p, map_location='cpu', weights_only=True)\n" \
           "y = np.load(p, allow_pickle=False)\n"
    assert _unpickling_problems(good, "good.py") == []


def test_package_never_unpickles():
    """No module in workbench imports a pickler or calls torch.load without weights_only=True."""
    root = Path(__file__).resolve().parents[2] / "workbench"
    problems = [p for f in sorted(root.rglob("*.py"))
                for p in _unpickling_problems(f.read_text(), str(f.relative_to(root.parent)))]
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- dispatch and CLI
def test_read_any_write_any(tmp_path):
    v = vec(2, method="caa")
    v.save(tmp_path / "dir")
    assert torch.equal(read_any(tmp_path / "dir")[0].vector, v.vector)
    assert read_any(tmp_path / "dir" / "vector.json")[0].method == "caa"
    export_gguf([vec(1), vec(2)], tmp_path / "two.gguf")
    assert [w.layer for w in read_any(tmp_path / "two.gguf", layer=2)] == [2]
    with pytest.raises(InterchangeError, match="no direction.3"):
        read_any(tmp_path / "two.gguf", layer=3)
    paths = write_any(read_any(tmp_path / "two.gguf"), tmp_path / "split")
    assert [p.name for p in paths] == ["layer01", "layer02"]
    with pytest.raises(InterchangeError, match="not bare tensor files"):
        write_any([v], tmp_path / "x.npy")


def test_cli_convert_offline(tmp_path, capsys, monkeypatch):
    import workbench.core.loading

    def no_model(*a, **k):
        raise AssertionError("convert must not load a model without --model")

    monkeypatch.setattr(workbench.core.loading, "load_model", no_model)
    t = torch.randn(D)
    torch.save(t, tmp_path / "vec_ep20_layer2.pt")
    np.save(tmp_path / "v.npy", t.numpy() * 2)
    assert main(["convert", str(tmp_path / "vec_ep20_layer2.pt"), str(tmp_path / "bipo"),
                 "--model-name", "tiny", "--d-model", str(D)]) == 0
    v = SteeringVector.load(tmp_path / "bipo")
    assert torch.equal(v.vector, t) and v.hook_name == "blocks.2.hook_resid_post" and v.model_name == "tiny"
    assert main(["convert", str(tmp_path / "v.npy"), str(tmp_path / "npy"), "--layer", "1"]) == 0
    # two vector dirs -> one two-layer control vector -> back to dirs
    assert main(["convert", str(tmp_path / "bipo"), str(tmp_path / "npy"), str(tmp_path / "cv.gguf")]) == 0
    assert [w.layer for w in import_gguf(tmp_path / "cv.gguf")] == [1, 2]
    assert main(["convert", str(tmp_path / "cv.gguf"), str(tmp_path / "back")]) == 0
    assert torch.equal(SteeringVector.load(tmp_path / "back" / "layer02").vector, t)
    assert main(["convert", str(tmp_path / "cv.gguf"), str(tmp_path / "one"), "--layer", "1"]) == 0
    assert torch.equal(SteeringVector.load(tmp_path / "one").vector, 2 * t)
    out = capsys.readouterr().out
    assert "blocks.2.hook_resid_post" in out
    # errors: exit 2, one line naming the file
    assert main(["convert", str(tmp_path / "v.npy"), str(tmp_path / "x"), "--layer", "1", "--d-model", "64"]) == 2
    assert main(["convert", str(tmp_path / "v.npy"), str(tmp_path / "x.gguf"), "--layer", "0"]) == 2
    assert main(["convert", str(tmp_path / "v.npy"), str(tmp_path / "x.gguf"), "--layer", "1",
                 "--hook", "attn_out"]) == 2
    assert main(["convert", str(tmp_path / "nothere.gguf"), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "v.npy: vector has d_model 32, expected 64" in err and "output of block 0" in err
    assert "hook_attn_out cannot be exported" in err and "nothere.gguf: no such file" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.gguf").exists()


def test_cli_convert_checks_against_model(tmp_path, capsys, monkeypatch, tiny_model):
    import workbench.core.loading

    monkeypatch.setattr(workbench.core.loading, "load_model", lambda name=None, **k: tiny_model)
    np.save(tmp_path / "v.npy", np.random.randn(D).astype(np.float32))
    np.save(tmp_path / "w.npy", np.random.randn(16).astype(np.float32))
    assert main(["convert", str(tmp_path / "v.npy"), str(tmp_path / "ok"), "--layer", "2", "--model", "tiny"]) == 0
    assert SteeringVector.load(tmp_path / "ok").model_name == tiny_model.cfg.model_name
    assert main(["convert", str(tmp_path / "w.npy"), str(tmp_path / "bad"), "--layer", "2", "--model", "tiny"]) == 2
    assert main(["convert", str(tmp_path / "v.npy"), str(tmp_path / "bad"), "--layer", "7", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "w.npy: vector" in err and "d_model 16" in err and "blocks.7.hook_resid_post" in err


@pytest.mark.embedded
def test_embedded_round_trip(tmp_path, embedded_model):
    path = tmp_path / "vec_ep20_layer15.pt"
    torch.save(torch.randn(embedded_model.cfg.d_model), path)
    v = import_bipo_vector(path, model=embedded_model)
    assert v.model_name == embedded_model.cfg.model_name and v.hook_name == "blocks.15.hook_resid_post"
    [w] = import_gguf(export_gguf(v, tmp_path / "cv.gguf"), model=embedded_model)
    assert torch.equal(w.vector, v.vector) and w.layer == 15
    torch.save(torch.randn(4096), tmp_path / "vec_ep20_layer15_llama.pt")
    with pytest.raises(InterchangeError, match="d_model 4096"):
        import_bipo_vector(tmp_path / "vec_ep20_layer15_llama.pt", model=embedded_model)
