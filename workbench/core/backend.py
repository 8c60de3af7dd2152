"""The TransformerLens line workbench runs on: 3.x ``HookedTransformer`` or 4.x ``TransformerBridge``.

TransformerLens 4 removed ``HookedTransformer`` (``from transformer_lens import HookedTransformer``
raises ``ImportError``) in favour of ``TransformerBridge``, which wraps a Hugging Face model and, with
``enable_compatibility_mode()``, answers to the same hook names (``blocks.14.hook_resid_post``).
Every version-dependent import and every place where the two differ lives here, as a handful of
plain functions:

* ``LINE`` (3 or 4) and ``TL_VERSION``: which line is installed; ``is_bridge(model)``: which kind
  of model this is (TransformerLens 3.9 also ships a ``TransformerBridge``).
* ``final_residual``: one full forward pass with hooks, returning the residual before ``ln_final``.
  ``HookedTransformer`` stops after the last block (``stop_at_layer=n_layers``); the bridge returns
  logits there, so the residual is read by a hook at ``ln_final.hook_in`` and the unembedding is
  skipped. The scoring engine's fast paths (``start_at_layer``, shared prompt keys/values) are
  3.x only: the bridge runs every block whatever ``start_at_layer`` says and ignores
  ``past_kv_cache`` (``TransformerLensKeyValueCache`` is None where TransformerLens lacks it), so on
  a bridge the engine runs full forwards through this function.
* ``remaining_hooks``: hooks a caller attached (a fresh bridge holds ~150 internal module hooks of
  its own, which are not counted).
* ``kv_cache_ok``: whether cached generation can be trusted (not on a bridge with transformers
  5.24.0, which decodes garbage with the cache; workbench then generates without it).
* ``boot_bridge``: a bridge from a transformers model, with the ``cfg`` facts workbench relies on.

Hook functions receive ``hook.name`` as the *internal* name on a bridge (``blocks.14.hook_out``):
workbench's hooks never read it; they are keyed by the requested name where they are made.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge import TransformerBridge  # 3.9 (the oldest line supported) ships it too

TL_VERSION = importlib.metadata.version("transformer-lens")
try:  # 3.x
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    LINE = 3
except ImportError:  # 4.x: both names raise ImportError with a migration pointer
    HookedTransformer = HookedTransformerConfig = None
    LINE = 4
try:  # HookedTransformer's key/value cache (the scoring engine's prompt sharing)
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
except ImportError:  # a bridge ignores past_kv_cache: the engine never shares keys/values on one
    TransformerLensKeyValueCache = TransformerLensKeyValueCacheEntry = None

#: A model workbench runs on: ``HookedTransformer`` (TransformerLens 3.x) or ``TransformerBridge``
#: (4.x, and 3.9's own bridge). A real union of the two classes, so annotations name what is passed.
Model: TypeAlias = HookedTransformer | TransformerBridge if LINE == 3 else TransformerBridge
#: transformers releases whose cached generation is wrong on a bridge (``"The-----"``).
BROKEN_CACHED_GENERATION = ("5.24.0", "5.25.0")  # bridge generation with its KV cache differs from the uncached one
Hook = tuple[str, Callable[..., Any]]


def is_bridge(model: Model) -> bool:
    """True for a ``TransformerBridge`` (no prefix skip, no shared keys/values), False for a ``HookedTransformer``."""
    return HookedTransformer is None or not isinstance(model, HookedTransformer)


class _Captured(Exception):
    """Raised by the read-out hook once the final residual is in hand (skips the unembedding)."""

    def __init__(self, residual: Tensor) -> None:
        super().__init__()
        self.residual = residual


def final_residual(model: Model, tokens: Int[Tensor, "batch pos"],
                   attention_mask: Int[Tensor, "batch pos"] | None = None,
                   fwd_hooks: Sequence[Hook] = ()) -> Float[Tensor, "batch pos d_model"]:
    """``(batch, pos, d_model)`` residual before ``ln_final`` of a full forward pass with ``fwd_hooks``.

    Differentiable (gradients flow through the hooks); hooks are removed on return.
    """
    if not is_bridge(model):
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            return model(tokens, attention_mask=attention_mask, stop_at_layer=model.cfg.n_layers)

    def capture(act: Tensor, hook: Any) -> None:  # noqa: ARG001
        raise _Captured(act)

    try:
        with model.hooks(fwd_hooks=[*fwd_hooks, ("ln_final.hook_in", capture)]):
            model(tokens, attention_mask=attention_mask)
    except _Captured as done:
        return done.residual
    raise RuntimeError("the bridge's forward pass never reached ln_final.hook_in")


def remaining_hooks(model: Model) -> int:
    """Forward/backward hooks a caller attached anywhere in ``model`` (0 when clean).

    Each hook counts once: those on hook points (``model.hooks``, ``run_with_hooks``, ``add_hook``)
    and, on a ``HookedTransformer``, raw torch hooks on any other module. A bridge's other module
    hooks are its own (about 150 on a fresh one) and are not counted.
    """
    points = {id(hp): hp for hp in model.hook_dict.values()}.values()  # a bridge lists aliases twice
    n = sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in points)
    if not is_bridge(model):
        n += sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                 for m in model.modules() if not isinstance(m, HookPoint))
    return n


def kv_cache_ok(model: Model) -> bool:
    """Can ``model.generate(use_past_kv_cache=True)`` be trusted here? (not on a bridge with a broken transformers)"""
    return not is_bridge(model) or importlib.metadata.version("transformers") not in BROKEN_CACHED_GENERATION


def boot_bridge(name: str, *, model_name: str, prepend_bos: bool, hf_model: Any = None, tokenizer: Any = None,
                **boot_kwargs: Any) -> Model:
    """A frozen ``TransformerBridge`` (``boot_transformers``), in compatibility mode, unprocessed.

    ``name`` is a hub id or a local directory (or a label, with ``hf_model`` given). The weights are
    used as they are (no LayerNorm folding, no centering), as workbench's ``HookedTransformer``
    models are, so a vector trained on one line steers the other identically. ``cfg`` is set to the
    facts workbench relies on: ``model_name`` (workbench's name, not the HF id),
    ``default_prepend_bos`` (False for chat models such as SmolLM2), ``tokenizer_prepends_bos`` (what
    the tokenizer does), ``rotary_base`` (the model's own
    ``rope_theta``; the bridge reports 10000) and ``dtype``. ``boot_kwargs``: ``device``, ``dtype``,
    ``device_map``, ``n_devices``, ``max_memory`` (accelerate's placement over several GPUs).
    """
    bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer, **boot_kwargs)
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    bridge.cfg.model_name = model_name
    bridge.cfg.default_prepend_bos = prepend_bos
    tok = bridge.tokenizer  # the bridge turns its add_bos_token on: to_tokens must know, to strip it
    if tok is not None and tok.bos_token_id is not None:
        bridge.cfg.tokenizer_prepends_bos = tok("a")["input_ids"][:1] == [tok.bos_token_id]
    bridge.cfg.rotary_base = hf_rotary_base(bridge.original_model.config)
    bridge.cfg.dtype = next(bridge.original_model.parameters()).dtype
    bridge.eval()
    bridge.requires_grad_(False)
    return bridge


def hf_rotary_base(hf_config: Any) -> float:
    """``rope_theta`` of a transformers config (``rope_parameters`` in transformers 5, else the attribute)."""
    rope = getattr(hf_config, "rope_parameters", None) or {}
    base = rope.get("rope_theta") if isinstance(rope, dict) else None
    return float(base or getattr(hf_config, "rope_theta", None) or 10000.0)


def to_dtype(model: Model, dtype: torch.dtype) -> Model:
    """``model`` in ``dtype`` with ``cfg.dtype`` set (in place, as ``nn.Module.to``)."""
    model.to(dtype)
    model.cfg.dtype = dtype
    return model
