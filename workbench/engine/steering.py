"""Applying steering vectors: add ``m * v`` at a hook point while a block of code runs.

Activation steering (Turner et al. 2023, arXiv 2308.10248; Rimsky et al. 2023, arXiv 2312.06681;
Cao et al. 2024, arXiv 2406.00045) adds a fixed vector to the residual stream. ``steer`` is a context
manager over TransformerLens' ``model.hooks(...)``: hooks exist only inside the ``with`` block and are
removed on exit, also after an exception. Several vectors, each with its own multiplier, may be
applied at once, at the same or different hooks.

Positions: ``"all"`` (the default, as in BiPO's official code), an int ``k`` (positions ``>= k``:
"from position k on", e.g. the response), ``("prompt", k)`` (positions ``< k``), or a boolean mask
of shape ``(batch, pos)``. Positions are absolute: inside ``generate`` with the KV cache the count
carries over from one decoding step to the next, so cached and uncached generation steer the same
tokens. ``generate`` decodes under steering; its decoding options travel together as one
``GenerationConfig``.

Conditional steering (CAST, Lee et al. 2024, arXiv 2409.05907): with ``condition=`` (a
``workbench.engine.gate.SteeringCondition``) each batch row is steered only when its prompt meets the
condition. The decision is made per row at the condition's hook (which must come at or before every
vector's hook) from the mean of the prompt's activations there; a closed row's activations are left
as they are (bit for bit the unsteered run), an open row's get exactly the ordinary steered sum.
``steer`` decides on every forward pass (``condition_mask``: which positions are the prompt's);
``generate`` decides on the prompt pass and keeps each row's decision for the generated tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from workbench.core.backend import Model, is_bridge, kv_cache_ok, remaining_hooks
from workbench.core.options import with_options
from workbench.core.vector import SteeringVector
from workbench.engine.gate import Gate, SteeringCondition
from workbench.engine.runners import make_runner

Positions = Literal["all"] | int | tuple[str, int] | Bool[Tensor, "batch pos"]


@dataclass
class _PositionCounter:
    """Absolute position of the first token of the current forward pass."""

    cumulative: bool = False  # True inside KV-cached generation
    offset: int = 0
    seen: int = 0

    def on_embed(self, act: Tensor, hook: Any) -> None:  # noqa: ARG002
        n = act.shape[1]
        if self.cumulative:
            self.offset, self.seen = self.seen, self.seen + n
        else:
            self.offset = 0


def _position_mask(positions: Positions, act: Tensor, offset: int) -> Tensor | None:
    """A ``(batch, pos, 1)`` float mask for ``act``, or None for every position."""
    if isinstance(positions, str):
        if positions != "all":
            raise ValueError(f"positions={positions!r}: use 'all', an int k (from k on), "
                             "('prompt', k) or a (batch, pos) bool mask")
        return None
    pos = torch.arange(offset, offset + act.shape[1], device=act.device)
    if isinstance(positions, int):
        keep = pos >= positions
    elif isinstance(positions, tuple) and len(positions) == 2 and positions[0] in ("prompt", "before"):
        keep = pos < int(positions[1])
    elif isinstance(positions, tuple) and len(positions) == 2 and positions[0] in ("response", "from"):
        keep = pos >= int(positions[1])
    elif isinstance(positions, torch.Tensor):
        if positions.shape != act.shape[:2]:
            raise ValueError(f"position mask has shape {tuple(positions.shape)} but the activation at "
                             f"this hook has (batch, pos) = {tuple(act.shape[:2])}")
        return positions.to(device=act.device, dtype=act.dtype).unsqueeze(-1)
    else:
        raise ValueError(f"positions={positions!r} is not understood")
    return keep.to(act.dtype).view(1, -1, 1)


def steering_hooks(model: Model, vectors: Sequence[SteeringVector], multipliers: Sequence[float],
                   positions: Positions = "all", counter: _PositionCounter | None = None,
                   gate: Gate | None = None) -> list[tuple[str, Any]]:
    """``(hook_name, fn)`` pairs adding ``m * v`` at each vector's hook, for ``model.hooks``; with ``gate``
    only on the rows whose condition holds (the condition's hook is registered first)."""
    counter = counter or _PositionCounter()
    hooks: list[tuple[str, Any]] = []
    if gate is not None:
        gate.condition.check_compatible(model)
        for vec in vectors:
            gate.condition.check_before(vec.hook_name)
        hooks.append((gate.condition.hook_name, gate.on_condition))
    needs_positions = not (isinstance(positions, str) and positions == "all")
    if needs_positions:
        # TransformerLens' generate embeds tokens itself (hook_embed does not fire), so positions are
        # counted where every forward from layer 0 passes; registered first, it runs first.
        hooks.append(("blocks.0.hook_resid_pre", counter.on_embed))
    for vec, mult in zip(vectors, multipliers, strict=True):
        vec.check_compatible(model)
        delta = vec.vector * float(mult)  # (d_model,)

        def add(act: Float[Tensor, "batch pos d_model"], hook: Any, delta: Tensor = delta) -> Tensor:
            d = delta.to(device=act.device, dtype=act.dtype)
            mask = _position_mask(positions, act, counter.offset) if needs_positions else None
            steered = act + d if mask is None else act + d * mask
            return steered if gate is None else gate.apply(act, steered)

        hooks.append((vec.hook_name, add))
    return hooks


def _as_lists(vectors: SteeringVector | Sequence[SteeringVector],
              multipliers: float | Sequence[float] | None) -> tuple[list[SteeringVector], list[float]]:
    vecs = [vectors] if isinstance(vectors, SteeringVector) else list(vectors)
    if multipliers is None:
        mults = [1.0] * len(vecs)
    elif isinstance(multipliers, (int, float)):
        mults = [float(multipliers)] * len(vecs)
    else:
        mults = [float(m) for m in multipliers]
    if len(mults) != len(vecs):
        raise ValueError(f"{len(vecs)} vectors but {len(mults)} multipliers")
    return vecs, mults


@contextlib.contextmanager
def steer(model: Model, vectors: SteeringVector | Sequence[SteeringVector],
          multipliers: float | Sequence[float] | None = None, positions: Positions = "all",
          *, condition: SteeringCondition | None = None, condition_mask: Bool[Tensor, "batch pos"] | None = None,
          _counter: _PositionCounter | None = None, _gate: Gate | None = None) -> Iterator[Model]:
    """Add ``multiplier * vector`` at each vector's hook point inside the ``with`` block.

    Args:
        model: the model; it is the same model after the block (hooks are removed in ``finally``).
        vectors: one vector or several (same or different hooks).
        multipliers: one number for all, or one per vector (default 1.0).
        positions: which token positions are steered (see the module docstring).
        condition: a CAST condition; each row of each forward pass is steered only when its prompt's mean
            activation at the condition's hook meets it (None: every row is steered).
        condition_mask: ``(batch, pos)`` bool, the positions averaged for the condition (the prompt's real
            tokens; default: every position of the forward pass).

    Example:
        >>> with steer(model, [power, wealth], [1.0, -0.5]):
        ...     logits = model(tokens)
        >>> with steer(model, power, 1.0, condition=cond):  # rows not about the topic run unsteered
        ...     logits = model(tokens)
    """
    vecs, mults = _as_lists(vectors, multipliers)
    if _gate is None and condition is not None:
        if not isinstance(condition, SteeringCondition):
            raise ValueError(f"condition must be a SteeringCondition, got {type(condition).__name__}")
        _gate = Gate(condition, condition_mask)
    hooks = steering_hooks(model, vecs, mults, positions, _counter, _gate)
    with model.hooks(fwd_hooks=hooks):
        yield model


_GENERATION_COPY_MAX_BYTES = 2 * 2**30


def _generation_model(model: Model) -> Model:
    """The model that decodes: a copy with its weights laid out for TransformerLens' matmuls.

    TransformerLens copies every block weight (and ``W_U``) into a transposed contiguous tensor at
    each forward call; with one new token per decoding step those copies cost more than the matmuls
    (about half of the time on the embedded model). ``workbench.engine.runners.make_runner`` makes them
    once per call, pre-laid-out, with bit-identical results (about the cost of one decoding step).
    ``model`` itself decodes when it has hooks attached (the caller's own hooks must fire), when it
    has no blocks, or when the copy would exceed 2 GiB, and a ``TransformerBridge`` always (its
    kernels are transformers', which need no such copy).
    """
    if is_bridge(model) or remaining_hooks(model) or not len(model.blocks):
        return model
    if sum(p.numel() * p.element_size() for p in model.parameters()) > _GENERATION_COPY_MAX_BYTES:
        return model
    return make_runner(model, 0, unembed=True)


@dataclass(frozen=True)
class GenerationConfig:
    """How ``generate`` decodes (TransformerLens' ``HookedTransformer.generate`` options).

    Attributes:
        max_new_tokens: tokens generated after each prompt (at most; decoding stops at EOS).
        do_sample: sample from the distribution (True) or decode greedily (False).
        temperature: softmax temperature when sampling.
        top_p: nucleus sampling's probability mass (None: the whole distribution).
        seed: seeds torch before decoding, so sampled output repeats.
        use_kv_cache: decode with the key/value cache; ignored (no cache) on a bridge with a
            transformers release whose cached generation is wrong (``backend.kv_cache_ok``).
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float | None = None
    seed: int | None = None
    use_kv_cache: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@torch.no_grad()
def generate(model: Model, prompts: str | Sequence[str],
             vectors: SteeringVector | Sequence[SteeringVector] = (),
             multipliers: float | Sequence[float] | None = None, positions: Positions | str = "all",
             config: GenerationConfig | None = None, *, condition: SteeringCondition | None = None,
             **options: Any) -> list[str] | str:
    """Generate continuations of ``prompts`` with vectors applied (batched, left-padded, KV cache).

    Args:
        prompts: already formatted prompts (see ``workbench.core.prompts.format_chat``); one string
            gives one string back.
        positions: as in ``steer``; additionally ``"prompt"`` (prompt tokens only) and
            ``"response"`` (generated tokens only), resolved against the padded prompt length.
        config: the decoding options (default ``GenerationConfig()``).
        condition: a CAST condition (``workbench.engine.gate.SteeringCondition``): each prompt is steered
            (prompt and generated tokens) only when the mean of its own tokens' activations at the
            condition's hook meets it; decided on the prompt pass and kept for every decoding step.
        **options: any ``GenerationConfig`` field (``max_new_tokens=8``, ``do_sample=True``, ``seed``,
            ...), overriding ``config``'s.

    Returns:
        The generated text of each prompt (without the prompt), special tokens removed.

    Example:
        >>> generate(model, format_chat(model, "Hi"), v, 2.0, max_new_tokens=16)
    """
    config = with_options(GenerationConfig, config, options, "generate")
    single = isinstance(prompts, str)
    prompt_list = [prompts] if single else list(prompts)
    tok = model.tokenizer
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        prepend_bos = bool(model.cfg.default_prepend_bos)
        tokens = model.to_tokens(prompt_list, prepend_bos=prepend_bos, padding_side="left")
    finally:
        tok.padding_side = old_side
    n_prompt = tokens.shape[1]
    if positions == "prompt":
        positions = ("prompt", n_prompt)
    elif positions == "response":
        positions = n_prompt
    vecs, mults = _as_lists(vectors, multipliers) if vectors else ([], [])
    use_kv_cache = config.use_kv_cache and kv_cache_ok(model)
    counter = _PositionCounter(cumulative=use_kv_cache)
    gate = None
    if condition is not None:
        if not isinstance(condition, SteeringCondition):
            raise ValueError(f"condition must be a SteeringCondition, got {type(condition).__name__}")
        condition.check_compatible(model)
        lengths = torch.tensor([model.to_tokens(p, prepend_bos=prepend_bos).shape[1] for p in prompt_list],
                               device=tokens.device)  # (batch,) each prompt's own tokens, left-padded
        mask = torch.arange(n_prompt, device=tokens.device)[None, :] >= (n_prompt - lengths)[:, None]
        gate = Gate(condition, mask, sticky=True)  # decided on the prompt pass, kept for the new tokens
    if config.seed is not None:
        torch.manual_seed(config.seed)
    decoder = _generation_model(model)
    with steer(decoder, vecs, mults, positions, _counter=counter, _gate=gate) if vecs else contextlib.nullcontext():
        out = decoder.generate(tokens, max_new_tokens=config.max_new_tokens, do_sample=config.do_sample,
                               temperature=config.temperature, top_p=config.top_p, use_past_kv_cache=use_kv_cache,
                               verbose=False, stop_at_eos=True, prepend_bos=False, padding_side="left",
                               return_type="tokens")
    texts = tok.batch_decode(out[:, n_prompt:], skip_special_tokens=True)
    return texts[0] if single else texts
