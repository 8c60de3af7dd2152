"""A Llama config.json (and a transformers LlamaConfig) as HookedTransformerConfig arguments."""

from __future__ import annotations

import json

import pytest
from conftest import write_llama_dir
from transformers import LlamaConfig

from workbench.core.devices import ModelLoadError
from workbench.core.hf_config import llama_cfg_kwargs, llama_config_from_json
from workbench.core.loading import load_model


def test_rope_scaling_config_matches_transformer_lens(tmp_path):
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    d = write_llama_dir(tmp_path / "tiny")
    ours = llama_config_from_json(json.loads((d / "config.json").read_text()), "tiny")
    theirs = convert_hf_model_config(str(d))
    assert ours["use_NTK_by_parts_rope"] is True
    for key in ("d_model", "d_head", "n_heads", "d_mlp", "n_layers", "eps", "d_vocab", "act_fn", "n_key_value_heads",
                "rotary_dim", "rotary_base", "use_NTK_by_parts_rope", "NTK_original_ctx_len",
                "NTK_by_parts_low_freq_factor", "NTK_by_parts_high_freq_factor", "NTK_by_parts_factor"):
        assert ours[key] == theirs[key], key


def test_unknown_config_field_is_named(tmp_path):
    d = write_llama_dir(tmp_path / "tiny", rope=False)
    raw = json.loads((d / "config.json").read_text())
    raw["sliding_window"] = 4096
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="sliding_window"):
        load_model(d)


def test_generic_config_fields_pass_only_at_their_defaults(tmp_path):
    d = write_llama_dir(tmp_path / "tiny", rope=False)
    raw = json.loads((d / "config.json").read_text()) | {"chunk_size_feed_forward": 0, "problem_type": None}
    assert llama_config_from_json(raw, "tiny")["d_model"] == raw["hidden_size"]
    with pytest.raises(ModelLoadError, match="chunk_size_feed_forward"):
        llama_config_from_json(raw | {"chunk_size_feed_forward": 64}, "tiny")


def test_config_object_and_config_json_agree():
    """The embedded model's path (a transformers config object) and a directory's config.json give one config."""
    c = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=100, max_position_embeddings=64, rope_theta=5e5)
    from_object = llama_cfg_kwargs(c, "tiny")
    from_json = llama_config_from_json(c.to_dict(), "tiny")
    assert from_object == {k: from_json[k] for k in from_object}
    assert from_object["n_key_value_heads"] == 2 and from_object["rotary_base"] == 5e5


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": None}, r"field 'hidden_size' is missing: the Llama loader needs it \(a positive integer\)"),
    ({"num_hidden_layers": "2"}, r"field 'num_hidden_layers' is \"2\" \(a str\): the Llama loader expects a positive"),
    ({"rms_norm_eps": -1}, r"field 'rms_norm_eps' is -1 \(a int\): the Llama loader expects a positive number"),
    ({"num_key_value_heads": 3}, r"field 'num_key_value_heads'=3 does not divide 'num_attention_heads'=4"),
    ({"hidden_size": 66}, r"field 'hidden_size'=66 is not a multiple of 'num_attention_heads'=4"),
])
def test_llama_fields_are_checked_one_by_one(tmp_path, change, message):
    d = write_llama_dir(tmp_path / "tiny", rope=False)
    raw = json.loads((d / "config.json").read_text())
    raw = {k: v for k, v in (raw | change).items() if v is not None}
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match=f"^{d / 'config.json'} {message}"):
        load_model(d)


def test_malformed_configs_are_user_errors_naming_the_culprit(tmp_path):
    from workbench.core.hf_config import supported_architectures

    for name, text, message in (
            ("list", "[]", r"expected a JSON object of config fields, got \[\] \(a list\)"),
            ("noarch", '{"model_type": "gpt2"}', r"field 'architectures' is missing: expected a list of one"),
            ("foo", '{"architectures": ["FooForCausalLM"]}', r"architecture 'FooForCausalLM' is not supported "
                                                           r"\(supported: LlamaForCausalLM, .*GPT2LMHeadModel"),
            ("gpt2", '{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}',
             r"field 'n_embd' is missing: the GPT2LMHeadModel loader needs it")):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(text)
        with pytest.raises(ModelLoadError, match=f"^{d / 'config.json'}:? {message}"):
            load_model(d)
    assert isinstance(ModelLoadError("x"), ValueError)  # the CLI reports it with exit code 2
    assert {"LlamaForCausalLM", "GPT2LMHeadModel", "Qwen2ForCausalLM", "MistralForCausalLM"} <= set(supported_architectures())
    assert "BertForMaskedLM" not in supported_architectures()  # not a causal language model


def test_converter_fields_come_from_the_converter():
    from transformers import GPT2Config

    from workbench.core.hf_config import check_converter_fields, converter_fields

    required, optional = converter_fields()["GPT2LMHeadModel"]
    assert {"n_embd", "n_head", "n_layer", "n_ctx", "vocab_size"} <= required and "scale_attn_weights" in optional
    check_converter_fields(GPT2Config(n_ctx=64, n_embd=32, n_layer=2, n_head=4, vocab_size=100), "GPT2LMHeadModel")
    with pytest.raises(ModelLoadError, match="^config.json field 'n_embd' is 0 .*expects a positive integer"):
        check_converter_fields(GPT2Config(n_ctx=64, n_embd=0), "GPT2LMHeadModel")
