"""Multiplier sweeps that share the forward pass below the steered layer.

A steering vector at ``blocks.L.hook_*`` changes nothing before block ``L``. Evaluating one batch at
several multipliers (the curves of BiPO, Cao et al. 2024, arXiv 2406.00045, Fig. 2-4) therefore
shares everything up to ``L``: the *prefix* runs once per batch, and only the remaining blocks (the
*suffix*) run once per multiplier. With TransformerLens this is
``resid = model(tokens, attention_mask=am, stop_at_layer=S)`` followed by
``model(resid, start_at_layer=S, tokens=tokens, attention_mask=am, stop_at_layer=n_layers)``.

Where the suffix starts (``plan_sweep``):

* ``blocks.L.hook_resid_post``: at ``S = L + 1``; ``m * v`` is added to the residual entering block
  ``L + 1``, which *is* ``resid_post`` of block ``L`` (exact, no hook needed).
* ``blocks.L.hook_resid_pre``: at ``S = L``, added the same way.
* any other hook point of block ``L`` (``resid_mid``, ``attn_out``, ``mlp_out``): at ``S = L``, and
  the vector is applied with ``workbench.steering.steer`` while the suffix runs.
* several vectors applied together (composition, possibly at different layers): ``S`` is the
  smallest entry layer; vectors entering exactly there are added to the residual, all others are
  hooked in the suffix (they sit at blocks ``>= S``, so the prefix never needs them).

Different vectors on the same batch share the prefix too (``ResidualCache`` keeps the residual at
each start layer, each block run once). ``precision="bf16"`` runs the suffixes on a bf16 copy of the
model; the prefix stays in the model's own dtype and log-prob sums stay in fp32.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from workbench.steering import steer
from workbench.vector import SteeringVector, parse_hook_name

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]
PRECISIONS = ("fp32", "bf16")
#: One vector, or several applied together with the same multiplier (composition).
VectorSpec = SteeringVector | Sequence[SteeringVector]


def as_vector_list(spec: VectorSpec, what: str = "vectors") -> list[SteeringVector]:
    vecs = [spec] if isinstance(spec, SteeringVector) else list(spec)
    for i, v in enumerate(vecs):
        if not isinstance(v, SteeringVector):
            raise TypeError(f"{what}[{i}] is a {type(v).__name__}, not a workbench.SteeringVector")
    return vecs


def label_vectors(vectors: VectorSpec | Mapping[str, VectorSpec],
                  model: HookedTransformer | None = None) -> dict[str, list[SteeringVector]]:
    """``{label: [vectors applied together]}`` from one vector, a list (one composition) or a dict.

    A single vector is labelled by its method (``"bipo"``); a composition by ``"bipo+caa"``. With
    ``model``, every vector is checked to fit it (``IncompatibleVectorError`` otherwise).
    """
    if isinstance(vectors, Mapping):
        out = {str(k): as_vector_list(v, f"vectors[{k!r}]") for k, v in vectors.items()}
    else:
        vecs = as_vector_list(vectors)
        out = {"+".join(v.method for v in vecs) or "none": vecs}
    if not out:
        raise ValueError("no vectors given: pass a SteeringVector, a list of them or a {label: vector} dict")
    if model is not None:
        for vecs in out.values():
            for v in vecs:
                v.check_compatible(model)
    return out


def _entry(vec: SteeringVector) -> tuple[int, bool]:
    """(first block whose input the vector changes, whether it can be added to that input directly)."""
    layer, point = parse_hook_name(vec.hook_name)
    if point == "hook_resid_post":
        return layer + 1, True
    if point == "hook_resid_pre":
        return layer, True
    return layer, False


@dataclass(frozen=True)
class SweepPlan:
    """How a set of vectors applied together is split into prefix and suffix.

    Attributes:
        start_layer: the suffix runs blocks ``start_layer .. n_layers - 1``.
        direct: ``(d_model,)`` fp32 sum of the vectors added to the residual entering
            ``start_layer`` (None if there are none).
        hooked: vectors applied with ``steer`` during the suffix.
    """

    start_layer: int
    direct: Float[Tensor, " d_model"] | None
    hooked: tuple[SteeringVector, ...]


def plan_sweep(model: HookedTransformer, vectors: VectorSpec) -> SweepPlan:
    """Split ``vectors`` (applied together) into a shared prefix and a per-multiplier suffix."""
    vecs = as_vector_list(vectors)
    for v in vecs:
        v.check_compatible(model)
    if not vecs:
        return SweepPlan(model.cfg.n_layers, None, ())
    entries = [_entry(v) for v in vecs]
    start = min(e for e, _ in entries)
    direct: Tensor | None = None
    hooked = []
    for v, (entry, residual) in zip(vecs, entries):
        if residual and entry == start:
            d = v.vector.float()
            direct = d if direct is None else direct + d
        else:
            hooked.append(v)
    return SweepPlan(start, direct, tuple(hooked))


class ResidualCache:
    """The residual stream of one batch at increasing layers; each block runs at most once.

    Example:
        >>> cache = ResidualCache(model, tokens, attention_mask)
        >>> resid14 = cache.at(14)   # residual entering block 14
        >>> resid20 = cache.at(20)   # continues from 14: blocks 14..19 only
    """

    def __init__(self, model: HookedTransformer, tokens: Int[Tensor, "batch pos"],
                 attention_mask: Int[Tensor, "batch pos"]) -> None:
        self.model, self.tokens, self.attention_mask = model, tokens, attention_mask
        self._cache: dict[int, Tensor] = {}

    @torch.no_grad()
    def at(self, layer: int) -> Float[Tensor, "batch pos d_model"]:
        """Residual entering block ``layer`` (``n_layers``: after the last block, before ``ln_final``)."""
        if layer in self._cache:
            return self._cache[layer]
        below = [k for k in self._cache if k < layer]
        if below:
            k = max(below)
            resid = self.model(self._cache[k], start_at_layer=k, tokens=self.tokens,
                               attention_mask=self.attention_mask, stop_at_layer=layer)
        else:
            resid = self.model(self.tokens, attention_mask=self.attention_mask, stop_at_layer=layer)
        self._cache[layer] = resid  # (batch, pos, d_model)
        return resid


def suffix_model(model: HookedTransformer, precision: Precision | str = "fp32") -> HookedTransformer:
    """The model that runs the per-multiplier suffix: ``model`` itself, or a bf16 copy of it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or model.cfg.dtype == torch.bfloat16:
        return model
    low = copy.deepcopy(model)
    low.to(torch.bfloat16)
    low.cfg.dtype = torch.bfloat16
    low.requires_grad_(False)
    return low


def _maybe_steer(model: HookedTransformer, vecs: Sequence[SteeringVector], m: float):
    if not vecs or m == 0:
        return contextlib.nullcontext()
    return steer(model, list(vecs), [m] * len(vecs))


@torch.no_grad()
def sweep_final_resid(model: HookedTransformer, vectors: VectorSpec, tokens: Int[Tensor, "batch pos"],
                      attention_mask: Int[Tensor, "batch pos"], multipliers: Sequence[float], *,
                      suffix: HookedTransformer | None = None, shared_prefix: bool = True,
                      prefix: ResidualCache | None = None,
                      ) -> Iterator[tuple[float, HookedTransformer, Float[Tensor, "batch pos d_model"]]]:
    """Final residual stream (before ``ln_final``) of one batch at each multiplier.

    Args:
        model: the model (runs the prefix).
        vectors: one vector or several applied together, each scaled by the multiplier.
        tokens, attention_mask: one right-padded batch (the mask is always passed explicitly).
        multipliers: the multipliers to evaluate.
        suffix: the model that runs the suffix (``suffix_model(model, "bf16")``); default ``model``.
        shared_prefix: False runs every multiplier as a full forward pass under ``steer`` (the
            naive reference the fast path is tested against).
        prefix: a ``ResidualCache`` of this batch shared with other vectors.

    Yields:
        ``(multiplier, model_that_ran_the_suffix, resid_final)``; read logits from the yielded
        model's ``ln_final``/``W_U``. No hook is attached while the caller holds a result.
    """
    n_layers = model.cfg.n_layers
    suffix = suffix if suffix is not None else model
    vecs = as_vector_list(vectors)
    if not shared_prefix:
        for m in multipliers:
            with _maybe_steer(suffix, vecs, float(m)):
                resid = suffix(tokens, attention_mask=attention_mask, stop_at_layer=n_layers)
            yield float(m), suffix, resid
        return
    plan = plan_sweep(model, vecs)
    prefix = prefix if prefix is not None else ResidualCache(model, tokens, attention_mask)
    base = prefix.at(plan.start_layer)  # (batch, pos, d_model): shared by every multiplier
    for m in multipliers:
        m = float(m)
        resid = base
        if plan.direct is not None and m != 0:
            resid = resid + (plan.direct * m).to(resid.dtype)
        resid = resid.to(suffix.cfg.dtype)
        if plan.start_layer < n_layers:
            with _maybe_steer(suffix, plan.hooked, m):
                resid = suffix(resid, start_at_layer=plan.start_layer, tokens=tokens,
                               attention_mask=attention_mask, stop_at_layer=n_layers)
        yield m, suffix, resid


def logits_at(model: HookedTransformer, h: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_vocab"]:
    """fp32 logits of final residuals ``h`` (before ``ln_final``), only for these rows.

    The original (fp32) model unembeds, whatever dtype ran the suffix.
    """
    h = model.ln_final(h.to(model.cfg.dtype).unsqueeze(0)).squeeze(0)
    logits = (h @ model.W_U).float()  # (n, d_vocab)
    if getattr(model, "b_U", None) is not None:
        logits = logits + model.b_U.float()
    cap = model.cfg.output_logits_soft_cap
    if cap and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits
