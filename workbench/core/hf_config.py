"""A Llama ``config.json`` as ``HookedTransformerConfig`` keyword arguments.

TransformerLens builds a ``HookedTransformer`` from a ``HookedTransformerConfig``; for Llama-family
models (Touvron et al. 2023, arXiv 2307.09288; Llama 3's ``rope_scaling``, arXiv 2407.21783) this
module maps a Hugging Face config onto it: ``llama_config_from_json`` from a directory's
``config.json`` (every field it does not know is an error naming it, never a silent default) and
``llama_cfg_kwargs`` from a transformers config object (the embedded model's de-quantised GGUF).
Both match TransformerLens 3.9's own ``convert_hf_model_config`` for ``LlamaForCausalLM``.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from workbench.core.backend import hf_rotary_base
from workbench.core.devices import ModelLoadError

# config.json fields of a Llama directory: those the loader maps (or checks), and metadata that does not
# change the forward pass. Anything else is an error naming the field, never a silent default.
_LLAMA_FIELDS = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "vocab_size",
                 "hidden_act", "rope_theta", "rope_scaling", "rope_parameters", "tie_word_embeddings",
                 "attention_bias", "mlp_bias", "architectures", "model_type"}
_METADATA_FIELDS = {"torch_dtype", "dtype", "transformers_version", "bos_token_id", "eos_token_id", "pad_token_id",
                    "_name_or_path", "initializer_range", "use_cache", "pretraining_tp", "attention_dropout",
                    "output_attentions", "output_hidden_states", "return_dict", "id2label", "label2id",
                    "tokenizer_class", "is_decoder", "sep_token_id", "decoder_start_token_id"}


def _generic_default(key: str, value: Any) -> bool:
    """Is ``key`` a field every transformers config has (``save_pretrained`` writes them all), at its
    default value? Such fields (``chunk_size_feed_forward``, ``problem_type``, ...) do not change a
    causal Llama; the same field with another value is an error."""
    defaults = PretrainedConfig().to_dict()
    return key in defaults and defaults[key] == value


def llama_config_from_json(raw: dict[str, Any], model_name: str, max_ctx: int = 8192) -> dict[str, Any]:
    """HookedTransformerConfig keyword arguments from a Llama ``config.json`` (as a dict).

    Matches TransformerLens 3.9's own ``convert_hf_model_config`` for ``LlamaForCausalLM`` (including
    ``_apply_llama3_rope_scaling``: a ``llama3`` ``rope_scaling``/``rope_parameters`` sets the
    NTK-by-parts fields) except that ``n_ctx`` is capped at ``max_ctx`` (TransformerLens allocates an
    ``n_ctx x n_ctx`` mask per layer; a Llama-3.1 config says 131072).

    Raises:
        ModelLoadError: a field the loader does not understand, or a value it cannot honour.
    """
    unknown = sorted(k for k in set(raw) - _LLAMA_FIELDS - _METADATA_FIELDS
                     if not (k.startswith("_") or k.endswith("_token_id") or _generic_default(k, raw[k])))
    if unknown:
        raise ModelLoadError(f"config.json field {unknown[0]!r} is not understood by the Llama loader"
                             + (f" (also {unknown[1:]})" if len(unknown) > 1 else ""))
    for flag in ("attention_bias", "mlp_bias"):
        if raw.get(flag):
            raise ModelLoadError(f"config.json field {flag!r}=true is not supported by the Llama loader")
    d_head = raw["hidden_size"] // raw["num_attention_heads"]
    if raw.get("head_dim") not in (None, d_head):
        raise ModelLoadError(f"config.json field 'head_dim'={raw['head_dim']} differs from hidden_size / "
                             f"num_attention_heads = {d_head}; not supported")
    rope = dict(raw.get("rope_parameters") or {}) | dict(raw.get("rope_scaling") or {})
    rope_type = str(rope.get("rope_type") or rope.get("type") or "default").lower()
    if rope_type not in ("default", "llama3"):
        raise ModelLoadError(f"config.json field 'rope_scaling' type {rope_type!r} is not supported "
                             "(supported: default, llama3)")
    n_kv = raw.get("num_key_value_heads", raw["num_attention_heads"])
    kw: dict[str, Any] = dict(
        model_name=model_name, d_model=raw["hidden_size"], d_head=d_head, n_heads=raw["num_attention_heads"],
        d_mlp=raw["intermediate_size"], n_layers=raw["num_hidden_layers"],
        n_ctx=min(int(raw.get("max_position_embeddings", 2048)), max_ctx), eps=float(raw.get("rms_norm_eps", 1e-6)),
        d_vocab=raw["vocab_size"], act_fn=raw.get("hidden_act", "silu"),
        n_key_value_heads=n_kv if n_kv != raw["num_attention_heads"] else None,
        normalization_type="RMS", positional_embedding_type="rotary", rotary_adjacent_pairs=False,
        rotary_dim=d_head, rotary_base=float(rope.get("rope_theta") or raw.get("rope_theta") or 10000.0),
        final_rms=True, gated_mlp=True, original_architecture="LlamaForCausalLM",
        default_prepend_bos=False, tokenizer_prepends_bos=False)
    if rope_type == "llama3":
        kw.update(use_NTK_by_parts_rope=True,
                  NTK_original_ctx_len=rope.get("original_max_position_embeddings", raw.get("max_position_embeddings")),
                  NTK_by_parts_low_freq_factor=rope.get("low_freq_factor", 1.0),
                  NTK_by_parts_high_freq_factor=rope.get("high_freq_factor", 4.0),
                  NTK_by_parts_factor=rope.get("factor", 1.0))
    return kw


def llama_cfg_kwargs(hf_config: Any, model_name: str) -> dict[str, Any]:
    """``HookedTransformerConfig`` keyword arguments of a transformers Llama config object.

    Args:
        hf_config: a transformers ``LlamaConfig`` (e.g. ``model.config`` of a de-quantised GGUF).
        model_name: the name recorded in ``cfg.model_name``.
    """
    c = hf_config
    n_kv = c.num_key_value_heads if c.num_key_value_heads != c.num_attention_heads else None
    return dict(
        model_name=model_name,
        d_model=c.hidden_size,
        d_head=c.hidden_size // c.num_attention_heads,
        n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        n_ctx=min(int(c.max_position_embeddings), 8192),
        eps=float(c.rms_norm_eps),
        d_vocab=c.vocab_size,
        act_fn=c.hidden_act,
        n_key_value_heads=n_kv,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=c.hidden_size // c.num_attention_heads,
        rotary_base=hf_rotary_base(c),
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        default_prepend_bos=False,
        tokenizer_prepends_bos=False,
    )
