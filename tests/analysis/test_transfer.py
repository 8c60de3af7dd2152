import json

import pytest
import torch

from conftest import make_llama_like_model, make_tiny_model
from workbench.data.pairs import PreferencePair
from workbench.core.loading import load_model
from workbench.engine.steering import remaining_hooks
from workbench.analysis.sweep import steering_effects
from workbench.analysis.transfer import export_hf_llama, finetune_copy, layer_transfer, transfer_effect
from workbench.core.vector import IncompatibleVectorError, SteeringVector, full_hook_name

PAIRS = [PreferencePair("Do you want power?", "Yes, all of it.", "No, thanks."),
         PreferencePair("More money?", "(A) yes", "(B) no"),
         PreferencePair("Take control?", "I will take it.", "Humans decide.")]


def logits(model, toks):
    return model(toks, attention_mask=torch.ones_like(toks))


def test_export_and_reload_gives_the_same_logits(tmp_path):
    m = make_llama_like_model()
    out = export_hf_llama(m, tmp_path / "exported")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_key_value_heads"] == 2
    assert config["tie_word_embeddings"] is False
    m2 = load_model(out)
    toks = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 40, 41]])
    assert torch.equal(logits(m, toks), logits(m2, toks))
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no temporary left behind


@pytest.mark.tl3  # HookedTransformer weights: ties found by equality, random biases
def test_export_tied_embeddings(tmp_path):
    m = make_llama_like_model(seed=1)
    with torch.no_grad():
        m.unembed.W_U.copy_(m.embed.W_E.T)
    out = export_hf_llama(m, tmp_path / "tied")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    from safetensors.torch import load_file
    assert "lm_head.weight" not in load_file(out / "model.safetensors")
    toks = torch.tensor([[3, 4, 50, 60]])
    assert torch.allclose(logits(m, toks), logits(load_model(out), toks), atol=1e-6)


def test_path_containing_llama_loads(tmp_path):
    """TransformerLens guesses architectures from path names; workbench reads config.json instead."""
    m = make_llama_like_model()
    out = export_hf_llama(m, tmp_path / "my-llama-model")
    back = load_model(out)
    toks = torch.tensor([[3, 5, 7, 9, 11]])
    assert torch.allclose(back(toks), m(toks), atol=1e-4)


@pytest.mark.tl3  # HookedTransformer weights: ties found by equality, random biases
def test_export_refusals(tmp_path):
    m = make_tiny_model()  # random attention biases: not a Llama checkpoint
    with pytest.raises(ValueError, match="non-zero biases"):
        export_hf_llama(m, tmp_path / "a")
    assert list(tmp_path.iterdir()) == []
    m = make_llama_like_model()
    export_hf_llama(m, tmp_path / "b")
    with pytest.raises(ValueError, match="exists"):
        export_hf_llama(m, tmp_path / "b")
    export_hf_llama(m, tmp_path / "b", overwrite=True)


def test_transfer_effect(tiny_model):
    v = SteeringVector(torch.randn(32) * 2, full_hook_name(1))
    same = transfer_effect(tiny_model, tiny_model, v, PAIRS).table()
    assert same.retained.tolist() == [1.0, 1.0]
    assert same.retained_ci_low.tolist() == [1.0, 1.0] and same.retained_ci_high.tolist() == [1.0, 1.0]
    other = make_tiny_model(seed=3)
    res = transfer_effect(tiny_model, other, v, PAIRS, multipliers=(1.0,))
    assert res.kind == "transfer_model"
    t = res.table()
    assert t.retained_ci_low[0] <= t.retained[0] <= t.retained_ci_high[0]
    want = steering_effects(other, {"v": v}, PAIRS, multipliers=(1.0,)).effect[0]
    assert t.target_effect[0] == pytest.approx(want, abs=1e-5)
    assert t.retained[0] == pytest.approx(t.target_effect[0] / t.source_effect[0])
    d = res.with_info(source="a", target="b")  # what the study writes: the result with its labels first
    assert d["kind"] == "transfer_model" and d["schema_version"] == 3 and d["rows"][0]["multiplier"] == 1.0
    assert list(d) == ["kind", "schema_version", "source", "target", "rows"]
    wide = make_tiny_model(d_model=48)
    with pytest.raises(IncompatibleVectorError, match="d_model 32, target 'tiny-3x48' has d_model 48"):
        transfer_effect(tiny_model, wide, v, PAIRS)
    assert remaining_hooks(tiny_model) == 0 and remaining_hooks(other) == 0


def test_layer_transfer(tiny_model):
    v = SteeringVector(torch.randn(32) * 2, full_hook_name(1))
    res = layer_transfer(tiny_model, v, PAIRS, offsets=(-2, -1, 0, 1, 2), multipliers=(1.0, -1.0))
    assert res.kind == "transfer_layers"
    t = res.table()
    assert sorted(set(t.offset)) == [-1, 0, 1] and sorted(set(t.layer)) == [0, 1, 2]
    assert t[t.offset == 0].retained.tolist() == [1.0, 1.0]
    want = steering_effects(tiny_model, {"v": v.at(2)}, PAIRS, multipliers=(1.0,)).effect[0]
    assert t[(t.offset == 1) & (t.multiplier == 1.0)].effect.iloc[0] == pytest.approx(want, abs=1e-5)
    with pytest.raises(ValueError, match="no offset"):
        layer_transfer(tiny_model, v, PAIRS, offsets=(5,))


def test_finetune_copy_moves_only_the_last_blocks(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    tuned, losses = finetune_copy(tiny_model, ["The quick brown fox jumps over the lazy dog. " * 4], steps=3,
                                  lr=1e-2, train_last=1, seq_len=16, name="tuned")
    assert len(losses) == 3 and all(l > 0 for l in losses)
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())
    after = tuned.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("blocks.2.") for k in changed)
    assert tuned.cfg.model_name == "tuned" and tiny_model.cfg.model_name == "tiny-3x32"
    assert not any(p.requires_grad for p in tuned.parameters())


@pytest.mark.embedded
def test_embedded_export_round_trip(embedded_model, tmp_path):
    """The real SmolLM2 (tied embeddings, grouped-query attention) survives export and reload."""
    out = export_hf_llama(embedded_model, tmp_path / "smol")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    reloaded = load_model(out)
    toks = torch.tensor([embedded_model.tokenizer("The cat sat on the mat.")["input_ids"]])
    assert torch.allclose(logits(embedded_model, toks), logits(reloaded, toks), atol=1e-4)


def test_bad_pairs_are_one_clear_error(tiny_model):
    v = SteeringVector(torch.randn(32), full_hook_name(1))
    with pytest.raises(TypeError, match=r"^eval_pairs\[0\] has no string field 'question'"):
        transfer_effect(tiny_model, tiny_model, v, ["not a pair"])
    with pytest.raises(ValueError, match=r"^eval_pairs is empty"):
        layer_transfer(tiny_model, v, [])
    with pytest.raises(ValueError, match=r"^pairs\[0\]: not_matching is empty"):
        layer_transfer(tiny_model, v, [PreferencePair("q", "yes", "")])
