"""A Llama ``config.json`` as ``HookedTransformerConfig`` keyword arguments.

TransformerLens builds a ``HookedTransformer`` from a ``HookedTransformerConfig``; for Llama-family
models (Touvron et al. 2023, arXiv 2307.09288; Llama 3's ``rope_scaling``, arXiv 2407.21783) this
module maps a Hugging Face config onto it: ``llama_config_from_json`` from a directory's
``config.json`` (every field it does not know is an error naming it, never a silent default) and
``llama_cfg_kwargs`` from a transformers config object (the embedded model's de-quantised GGUF).
Both match TransformerLens 3.9's own ``convert_hf_model_config`` for ``LlamaForCausalLM``.

Every ``config.json`` is validated field by field before anything is built from it: ``read_config_json``
(a JSON object), ``config_architecture`` (an ``architectures`` list naming one the loader supports,
else an error listing them), ``check_llama_fields`` (the Llama loader's own list of required and
optional fields with their types, ``LLAMA_REQUIRED`` / ``LLAMA_OPTIONAL``) and, for the other
architectures, ``check_converter_fields`` (the fields TransformerLens' converter reads for that
architecture, taken from the converter itself). Each error is a ``ModelLoadError`` naming the field
and what was expected.
"""

from __future__ import annotations

import functools
import inspect
import json
import numbers
import re
from pathlib import Path
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


#: the Llama loader's required fields and what each must be (a check and its wording)
_POSITIVE_INT = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer")
_POSITIVE_NUMBER = (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0, "a positive number")
_STRING = (lambda v: isinstance(v, str) and v != "", "a non-empty string")
_BOOL = (lambda v: isinstance(v, bool), "true or false")
_OBJECT_OR_NULL = (lambda v: v is None or isinstance(v, dict), "an object or null")
_INT_OR_NULL = (lambda v: v is None or _POSITIVE_INT[0](v), "a positive integer or null")
LLAMA_REQUIRED = {"hidden_size": _POSITIVE_INT, "intermediate_size": _POSITIVE_INT, "num_hidden_layers": _POSITIVE_INT,
                  "num_attention_heads": _POSITIVE_INT, "vocab_size": _POSITIVE_INT}
LLAMA_OPTIONAL = {"num_key_value_heads": _POSITIVE_INT, "head_dim": _INT_OR_NULL,
                  "max_position_embeddings": _POSITIVE_INT, "rms_norm_eps": _POSITIVE_NUMBER, "hidden_act": _STRING,
                  "rope_theta": _POSITIVE_NUMBER, "rope_scaling": _OBJECT_OR_NULL, "rope_parameters": _OBJECT_OR_NULL,
                  "tie_word_embeddings": _BOOL, "attention_bias": _BOOL, "mlp_bias": _BOOL, "model_type": _STRING}
LLAMA_ARCHITECTURE = "LlamaForCausalLM"


def _shown(value: Any) -> str:
    return f"{json.dumps(value)[:60]} (a {type(value).__name__})"


def _check_field(raw: dict[str, Any], key: str, rule: tuple[Any, str], loader: str, required: bool) -> None:
    ok, expected = rule
    if key not in raw:
        if required:
            raise ModelLoadError(f"config.json field {key!r} is missing: the {loader} needs it ({expected})")
        return
    if not ok(raw[key]):
        raise ModelLoadError(f"config.json field {key!r} is {_shown(raw[key])}: the {loader} expects {expected}")


def read_config_json(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of model directory ``path`` as a dict; not JSON or not an object is a ``ModelLoadError``."""
    file = Path(path) / "config.json"
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{file}: not valid JSON ({exc})") from None
    except UnicodeDecodeError:
        raise ModelLoadError(f"{file}: not valid JSON (not UTF-8 text)") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{file}: expected a JSON object of config fields, got {_shown(raw)}")
    return raw


def _causal(name: str) -> bool:
    return name.endswith(("ForCausalLM", "LMHeadModel", "LMHeadCustomModel"))


@functools.cache
def converter_fields() -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """``{architecture: (fields read, fields read only if present)}`` of TransformerLens 3.x's
    ``convert_hf_model_config``, for the causal language models it converts from a config (read from
    the converter's own source, so the list is the installed TransformerLens'); ``{}`` on 4.x or where
    the source cannot be read."""
    try:
        import transformer_lens.loading_from_pretrained as lp

        source = inspect.getsource(lp.convert_hf_model_config)
    except (ImportError, OSError, TypeError):
        return {}
    parts = re.split(r'\n    (?:el)?if architecture == "(\w+)":', source)
    out = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if _causal(name) and name != LLAMA_ARCHITECTURE:
            optional = frozenset(re.findall(r'(?:hasattr|getattr)\(\s*hf_config,\s*"(\w+)"', body))
            out[name] = (frozenset(re.findall(r"hf_config\.(\w+)", body)) - optional, optional)
    return out


def supported_architectures() -> list[str]:
    """The architectures a local directory may name: Llama (``llama_dir``) and those ``hf_dir`` streams
    through TransformerLens' converters (``STREAMED_ARCHITECTURES``)."""
    return [LLAMA_ARCHITECTURE, *sorted(STREAMED_ARCHITECTURES)]


def config_architecture(raw: dict[str, Any], check_supported: bool = True) -> str:
    """The one architecture ``raw["architectures"]`` names; missing, malformed or unsupported is an error
    naming it and listing the supported ones."""
    supported = ", ".join(supported_architectures())
    arch = raw.get("architectures")
    if not (isinstance(arch, list) and len(arch) == 1 and isinstance(arch[0], str)):
        what = "missing" if arch is None else _shown(arch)
        raise ModelLoadError(f"config.json field 'architectures' is {what}: expected a list of one model class, "
                             f"e.g. [\"{LLAMA_ARCHITECTURE}\"] (supported: {supported})")
    if check_supported and converter_fields() and arch[0] not in supported_architectures():
        raise ModelLoadError(f"config.json: architecture {arch[0]!r} is not supported (supported: {supported})")
    return arch[0]


_INT_FIELD = re.compile(r"^(n_\w+|num_\w+|hidden_size|intermediate_size|vocab_size|max_position_embeddings|ffn_dim|"
                        r"rotary_dim|kv_channels|seq_length|d_ff|d_kv|d_model)$")
_EPS_FIELD = re.compile(r"eps|epsilon")


def check_converter_fields(hf_config: Any, architecture: str) -> None:
    """Every field TransformerLens' converter reads for ``architecture`` present on the transformers config
    (``config.json`` with transformers' defaults), sizes positive integers, epsilons positive numbers,
    activation names strings; otherwise a ``ModelLoadError`` naming the field."""
    required, _ = converter_fields().get(architecture, (frozenset(), frozenset()))
    loader = f"TransformerLens {architecture} converter"
    for key in sorted(required):
        try:
            value = getattr(hf_config, key)
        except AttributeError:
            raise ModelLoadError(f"config.json field {key!r} is missing: the {loader} needs it") from None
        except Exception as exc:  # noqa: BLE001 -- transformers' per-layer fields raise other errors on reads
            raise ModelLoadError(f"config.json field {key!r} cannot be read: {exc}") from None
        rule = (_POSITIVE_INT if _INT_FIELD.match(key) else _POSITIVE_NUMBER if _EPS_FIELD.search(key)
                else _STRING if key in ("hidden_act", "activation_function") else None)
        if rule is not None and not rule[0](value):
            raise ModelLoadError(f"config.json field {key!r} is {_shown(value)}: the {loader} expects {rule[1]}")


def check_llama_fields(raw: dict[str, Any]) -> None:
    """The Llama loader's fields, one by one: required ones present, every one of the type it needs."""
    loader = "Llama loader"
    for key, rule in LLAMA_REQUIRED.items():
        _check_field(raw, key, rule, loader, required=True)
    for key, rule in LLAMA_OPTIONAL.items():
        _check_field(raw, key, rule, loader, required=False)
    if raw["hidden_size"] % raw["num_attention_heads"]:
        raise ModelLoadError(f"config.json field 'hidden_size'={raw['hidden_size']} is not a multiple of "
                             f"'num_attention_heads'={raw['num_attention_heads']}")
    n_kv = raw.get("num_key_value_heads", raw["num_attention_heads"])
    if raw["num_attention_heads"] % n_kv:
        raise ModelLoadError(f"config.json field 'num_key_value_heads'={n_kv} does not divide "
                             f"'num_attention_heads'={raw['num_attention_heads']}")


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
        ModelLoadError: a field missing or of the wrong type (``check_llama_fields``), a field the loader
            does not understand, or a value it cannot honour.
    """
    if not isinstance(raw, dict):
        raise ModelLoadError(f"config.json: expected a JSON object of config fields, got {_shown(raw)}")
    check_llama_fields(raw)
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


#: the architectures a local directory may name, each with TransformerLens 3.9's weight converter
#: (``transformer_lens.pretrained.weight_conversions``) that ``workbench.core.hf_dir`` streams through;
#: Llama is read by ``workbench.core.llama_dir``
STREAMED_ARCHITECTURES = {
    "GPT2LMHeadModel": "convert_gpt2_weights", "GPTNeoXForCausalLM": "convert_neox_weights",
    "MistralForCausalLM": "convert_mistral_weights", "MixtralForCausalLM": "convert_mixtral_weights",
    "Qwen2ForCausalLM": "convert_qwen2_weights",
    "Qwen3ForCausalLM": "convert_qwen3_weights", "Phi3ForCausalLM": "convert_phi3_weights",
    "GemmaForCausalLM": "convert_gemma_weights", "Gemma2ForCausalLM": "convert_gemma_weights",
    "Gemma3ForCausalLM": "convert_gemma_weights", "OlmoForCausalLM": "convert_olmo_weights",
    "Olmo2ForCausalLM": "convert_olmo2_weights",
}
GEMMA_ARCHITECTURES = ("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM")
#: families TransformerLens 3.9 configures from the model's *name* (hard-coded per checkpoint): built
#: here from the directory's config instead
_NAME_KEYED = (*GEMMA_ARCHITECTURES, "OlmoForCausalLM", "Olmo2ForCausalLM")


def _rope(hf_config: Any, layer_type: str | None = None) -> dict[str, Any]:
    params = getattr(hf_config, "rope_parameters", None) or {}
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    out = dict(params) | (dict(scaling) if isinstance(scaling, dict) and "rope_type" in scaling else {})
    kind = str(out.get("rope_type") or out.get("type") or "default").lower()
    if kind not in ("default", "linear"):
        raise ModelLoadError(f"config.json field 'rope_parameters' type {kind!r} is not supported for "
                             f"{hf_config.architectures[0]} (supported: default, linear on Gemma 3's global layers)")
    return out


def _name_keyed_config(c: Any, architecture: str) -> dict[str, Any]:
    """``HookedTransformerConfig`` fields of a Gemma 1/2/3 or OLMo 1/2 config, as TransformerLens 3.9's
    hard-coded per-checkpoint entries set them, from the config's own values."""
    d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    act = getattr(c, "hidden_activation", None) or c.hidden_act
    kw: dict[str, Any] = dict(
        d_model=c.hidden_size, d_head=d_head, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, d_vocab=c.vocab_size, act_fn=act,
        positional_embedding_type="rotary", rotary_dim=d_head, gated_mlp=True, original_architecture=architecture,
        n_key_value_heads=getattr(c, "num_key_value_heads", None) or c.num_attention_heads)
    if architecture.startswith("Olmo"):
        kw.update(eps=getattr(c, "rms_norm_eps", 1e-5), rotary_base=float(_rope(c).get("rope_theta", 10000.0)),
                  normalization_type="LN" if architecture == "OlmoForCausalLM" else "RMS",
                  attn_types=["global"] * c.num_hidden_layers)
        if architecture == "OlmoForCausalLM":
            kw.update(eps=1e-5, clip_qkv=getattr(c, "clip_qkv", None))
        if kw["n_key_value_heads"] == c.num_attention_heads:
            kw["n_key_value_heads"] = None
        return kw
    kw.update(eps=c.rms_norm_eps, normalization_type="RMS", final_rms=True, use_attn_scale=True,
              rotary_base=float(_rope(c, "full_attention").get("rope_theta", 10000.0)))
    if architecture == "GemmaForCausalLM":
        return kw
    kw.update(use_normalization_before_and_after=True, attn_scale=float(c.query_pre_attn_scalar) ** 0.5,
              attn_scores_soft_cap=float(getattr(c, "attn_logit_softcapping", None) or -1.0),
              output_logits_soft_cap=float(getattr(c, "final_logit_softcapping", None) or -1.0))
    types = list(getattr(c, "layer_types", None) or [])
    if getattr(c, "sliding_window", None) and types:
        kw.update(use_local_attn=True, window_size=c.sliding_window,
                  attn_types=["local" if t == "sliding_attention" else "global" for t in types])
    if architecture == "Gemma3ForCausalLM":
        kw.update(use_qk_norm=True, rotary_base_local=float(_rope(c, "sliding_attention").get("rope_theta", 10000.0)))
        factor = _rope(c, "full_attention").get("factor")
        if factor not in (None, 1, 1.0):
            kw["rotary_scaling_factor"] = float(factor)
    return kw


def tl_config_dict(hf_config: Any, architecture: str, model_name: str, max_ctx: int = 8192) -> dict[str, Any]:
    """``HookedTransformerConfig`` keyword arguments from a transformers config *object*.

    TransformerLens 3.9's ``convert_hf_model_config`` picks Llama, Gemma and OLMo by the model's
    *name*; here the architecture is the config's own: Gemma 1/2/3 and OLMo 1/2 are built from its
    values (``_name_keyed_config``), every other family by TransformerLens' own converter, given a
    neutral copy of the config. ``n_ctx`` is capped at ``max_ctx``.
    """
    if architecture not in STREAMED_ARCHITECTURES:
        raise ModelLoadError(f"config.json: architecture {architecture!r} is not supported "
                             f"(supported: {', '.join(supported_architectures())})")
    if architecture in _NAME_KEYED:
        kw = _name_keyed_config(hf_config, architecture)
    else:
        import tempfile

        import transformer_lens.loading_from_pretrained as lp

        with tempfile.TemporaryDirectory(prefix="wb-config-") as tmp:
            neutral = Path(tmp) / "model"  # no family name in the path for TransformerLens to guess from
            neutral.mkdir()
            hf_config.to_json_file(str(neutral / "config.json"))
            if any(word in str(neutral).lower() for word in ("llama", "gemma", "olmo")):
                raise ModelLoadError(f"the temporary directory {tmp} names a model family; set TMPDIR elsewhere")
            kw = lp.convert_hf_model_config(str(neutral))
        for key in ("tokenizer_name", "trust_remote_code", "quantization_method", "dtype"):
            kw.pop(key, None)
    kw["model_name"] = model_name
    kw["n_ctx"] = min(int(kw.get("n_ctx") or max_ctx), max_ctx)
    return kw


_CORE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size")


def check_core_fields(raw: dict[str, Any], config_class: Any, architecture: str) -> None:
    """The size fields every family needs written in ``config.json`` itself (under the config class's own
    name or its alias: ``n_embd`` for GPT-2's ``hidden_size``), not left to transformers' defaults of
    some other model; a missing one is a ``ModelLoadError`` naming it."""
    aliases = getattr(config_class, "attribute_map", {}) or {}
    native = config_class().to_dict()
    for key in _CORE_FIELDS:
        name = aliases.get(key, key)
        if name not in native and key not in native:
            continue  # a field this family does not have (GPT-2 has no intermediate_size)
        if key not in raw and name not in raw:
            raise ModelLoadError(f"config.json field {name!r} is missing: the {architecture} loader needs it")
