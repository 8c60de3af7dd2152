"""Steering conditions: the vectors applied together, each with its multiplier, and where they enter.

A condition is ``((v, 1.0),)``, ``((v_a, 1.0), (v_b, 0.5))`` (composition), or ``()`` for the
unsteered model. Each vector is added at every position of its hook point (``resid_pre``,
``resid_mid``, ``resid_post``, ``attn_out`` or ``mlp_out`` of any block), as in activation addition
(Turner et al. 2023, arXiv 2308.10248) and CAA (Rimsky et al. 2023, arXiv 2312.06681). ``entry``
says at which block a vector starts to change the forward pass, which the engine uses to share the
blocks below among all conditions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from workbench.core.backend import Model
from workbench.core.vector import SteeringVector, parse_hook_name

#: One vector, or several applied together with the same multiplier (composition).
VectorSpec = SteeringVector | Sequence[SteeringVector]
#: The vectors applied together, each with its multiplier; ``()`` is the unsteered model.
Condition = Sequence[tuple[SteeringVector, float]]


def entry(model: Model, hook_name: str) -> tuple[int, bool]:
    """``(start layer, direct)`` of a vector at ``hook_name``.

    The start layer is the first block whose input the vector can change; ``direct`` is True when
    the vector is added to that block's input (``resid_pre`` of ``L``: start ``L``; ``resid_post`` of
    ``L``: start ``L + 1``), False when it is added by a hook inside block ``L`` (``resid_mid``,
    ``attn_out``, ``mlp_out``).
    """
    if hook_name not in model.hook_dict:
        raise ValueError(f"hook {hook_name!r} does not exist in model {model.cfg.model_name!r} "
                         f"({model.cfg.n_layers} layers)")
    layer, point = parse_hook_name(hook_name)
    if point == "hook_resid_pre":
        return layer, True
    if point == "hook_resid_post":
        return layer + 1, True
    return layer, False


def as_vector_list(spec: VectorSpec, what: str = "vectors") -> list[SteeringVector]:
    """``spec`` as a list of vectors; a ``TypeError`` naming ``what[i]`` for anything else."""
    vecs = [spec] if isinstance(spec, SteeringVector) else list(spec)
    for i, v in enumerate(vecs):
        if not isinstance(v, SteeringVector):
            raise TypeError(f"{what}[{i}] is a {type(v).__name__}, not a workbench.SteeringVector")
    return vecs


def label_vectors(vectors: VectorSpec | Mapping[str, VectorSpec],
                  model: Model | None = None) -> dict[str, list[SteeringVector]]:
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


def sweep_conditions(specs: Mapping[str, Sequence[SteeringVector]], multipliers: Sequence[float],
                     ) -> tuple[list[Condition], list[tuple[str, float]]]:
    """Conditions for every (label, multiplier) of ``specs`` (one shared unsteered condition for m = 0).

    Returns ``(conditions, keys)``: ``keys[c]`` is the ``(label, multiplier)`` of condition ``c``;
    the unsteered condition, if any multiplier is 0, is listed once per label under that label.
    """
    conds: list[Condition] = []
    keys: list[tuple[str, float]] = []
    for label, vecs in specs.items():
        for m in multipliers:
            keys.append((label, float(m)))
            conds.append(() if m == 0 else tuple((v, float(m)) for v in vecs))
    return conds, keys


#: One added delta: ``(hook name, (d_model,) for every item or (b, d_model) one per item)``.
Delta = tuple[str, Tensor]


def condition_deltas(condition: Condition) -> list[Delta]:
    """``m * v`` per vector of a condition (fp32, on the vector's device; moved where it is added)."""
    return [(v.hook_name, v.vector.float() * float(m)) for v, m in condition if m != 0]


def start_layer(model: Model, deltas: Sequence[Delta]) -> int:
    """First block any delta changes (``n_layers`` for none)."""
    return min((entry(model, name)[0] for name, _ in deltas), default=model.cfg.n_layers)

