"""Every family a local directory may be: architecture from config.json (never the path), logits as
transformers computes them, one CAA + one BiPO step + one evaluation, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAMILIES, write_family_dir
from transformers import AutoModelForCausalLM

from workbench.core.backend import LINE, remaining_hooks
from workbench.core.devices import ModelLoadError
from workbench.core.hf_config import supported_architectures
from workbench.core.loading import load_model
from workbench.data.pairs import PreferencePair
from workbench.evaluate.suite import evaluate_vectors
from workbench.train.baselines import caa
from workbench.train.bipo import BiPOConfig, train_bipo

pytestmark = pytest.mark.skipif(LINE != 3, reason="the streaming loader is TransformerLens 3's")

PAIRS = [PreferencePair("Is it so?", "Yes.", "No."), PreferencePair("Go on?", "Sure.", "Never.")]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """Each family saved under a name that would fool a path-based guess (``llama-models/qwen2`` ...)."""
    root = tmp_path_factory.mktemp("llama-models")
    return {f: write_family_dir(root / ("gemma-runs" if f.startswith("qwen") else "llama-models") / f, f,
                                max_pos=512) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_matches_transformers_and_trains(family, family_dirs):
    model = load_model(family_dirs[family])
    hf = AutoModelForCausalLM.from_pretrained(family_dirs[family]).eval()
    tokens = torch.randint(3, model.cfg.d_vocab, (1, 256), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(tokens).float(), hf(tokens).logits.float()
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-4
    assert_trains_and_evaluates(model)


def assert_trains_and_evaluates(model) -> None:
    """One CAA vector, one BiPO epoch and a log-odds evaluation of both run on ``model`` (either line)."""
    vec = caa(model, PAIRS, layer=0)
    assert vec.vector.shape == (model.cfg.d_model,) and torch.isfinite(vec.vector).all()
    res = train_bipo(model, PAIRS, BiPOConfig(layer=0, lr=0.1, epochs=1, batch_size=2, warmup_steps=0,
                                             max_length=32), progress=False)
    assert torch.isfinite(res.vector.vector).all() and res.vector.vector.abs().sum() > 0
    r = evaluate_vectors(model, {"caa": vec, "bipo": res.vector}, PAIRS, multipliers=[-1.0, 0.0, 1.0],
                         metrics=["logodds"], n_boot=20, progress=False)
    assert r["kind"] == "eval" and [v["label"] for v in r["vectors"]] == ["caa", "bipo"]
    assert remaining_hooks(model) == 0


def test_bf16_directory_of_a_tied_family_shares_the_embedding(tmp_path):
    d = write_family_dir(tmp_path / "llama-models" / "q", "qwen2", dtype=torch.bfloat16)
    model = load_model(d, dtype="bf16")
    assert model.cfg.original_architecture == "Qwen2ForCausalLM" and model.W_E.dtype == torch.bfloat16
    assert model.unembed.W_U.data_ptr() == model.embed.W_E.data_ptr()  # one storage, not two


def _edit_config(d, **changes):
    raw = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            raw.pop(k, None)
        else:
            raw[k] = v
    (d / "config.json").write_text(json.dumps(raw))


def test_refusals_name_the_field_or_architecture(tmp_path):
    d = write_family_dir(tmp_path / "m", "gemma2")
    _edit_config(d, architectures=["BertForMaskedLM"])
    with pytest.raises(ModelLoadError, match=r"'BertForMaskedLM' is not supported \(supported: .*Gemma2ForCausalLM"):
        load_model(d)
    _edit_config(d, architectures=["Gemma2ForCausalLM"], num_hidden_layers=None)
    with pytest.raises(ModelLoadError, match=r"field 'num_hidden_layers' is missing"):
        load_model(d)
    _edit_config(d, num_hidden_layers=2)
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no \\*.safetensors weights"):
        load_model(d)


def test_every_family_is_listed_as_supported():
    assert {"GPT2LMHeadModel", "GPTNeoXForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM",
            "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
            "Phi3ForCausalLM", "OlmoForCausalLM", "Olmo2ForCausalLM"} <= set(supported_architectures())
