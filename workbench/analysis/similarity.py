"""Cosine similarity between steering vectors: methods, behaviors and layers.

How much do two steering vectors point the same way? BiPO (Cao et al. 2024, arXiv 2406.00045)
compares its vectors with CAA's mean differences (Rimsky et al. 2023, arXiv 2312.06681) at the same
layer, and notes that behaviors share directions: its released Llama-2-7b-chat vectors for power-
and wealth-seeking have cosine 0.51. This module gives the views as results (``workbench.core.results``):

* ``cosine_table(vectors)``: the square matrix between any labelled set of vectors (a ``cosine``
  result: ``labels`` and ``matrix``; ``.table()`` is the square DataFrame);
* ``cosine_pairs(vectors)``: the same, one row per unordered pair (a long DataFrame, for reading);
* ``method_cosines(a, b)``: per layer, the cosine between two methods' vectors (BiPO vs CAA; a
  ``cosine_methods`` result);
* ``layer_cosine_table(vectors_by_layer)``: layer x layer for vectors extracted at every layer (a
  ``cosine`` result).

Cosine ignores the hook: vectors at different hooks or layers can be compared (their d_model must
agree). A zero vector has no direction and is an error. Cosines are computed in float64 and rounded
to 12 decimals, so exact cases are exact (a vector with itself gives 1.0, with its negation -1.0,
orthogonal vectors 0.0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from workbench.core.results import COSINE, COSINE_METHODS, Result, result
from workbench.core.vector import SteeringVector

VectorLike = SteeringVector | Tensor
DECIMALS = 12


def _tensor(label: Any, v: VectorLike) -> Float[Tensor, " d_model"]:
    t = v.vector if isinstance(v, SteeringVector) else v
    if not isinstance(t, Tensor) or t.ndim != 1:
        raise ValueError(f"vector {label!r}: expected a SteeringVector or a 1-d tensor, got "
                         f"{type(v).__name__} {tuple(getattr(t, 'shape', ()))}")
    t = t.detach().to("cpu", torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"vector {label!r} holds NaN or infinite values")
    if t.norm() == 0:
        raise ValueError(f"vector {label!r} is zero: cosine similarity is undefined")
    return t


def _stack(vectors: Mapping[Any, VectorLike]) -> tuple[list[Any], Float[Tensor, "n d_model"]]:
    if len(vectors) == 0:
        raise ValueError("no vectors given")
    labels = list(vectors)
    rows = [_tensor(k, vectors[k]) for k in labels]
    dims = {r.shape[0] for r in rows}
    if len(dims) > 1:
        sizes = ", ".join(f"{k!r}: {r.shape[0]}" for k, r in zip(labels, rows))
        raise ValueError(f"vectors have different d_model ({sizes})")
    mat = torch.stack(rows)  # (n, d_model) in fp64 so that exact cases come out exact
    return labels, mat / mat.norm(dim=1, keepdim=True)


def _round(x: Tensor) -> Tensor:
    return torch.round(x.clamp(-1, 1), decimals=DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0


def cosine(a: VectorLike, b: VectorLike) -> float:
    """Cosine similarity of two vectors (fp64), in ``[-1, 1]``."""
    _, unit = _stack({"a": a, "b": b})
    return _round(unit[0] @ unit[1]).item()


def _json_label(x: Any) -> Any:
    x = x.item() if hasattr(x, "item") else x  # numpy scalars to Python
    return x if isinstance(x, (int, float)) else str(x)


def cosine_table(vectors: Mapping[Any, VectorLike]) -> Result:
    """Pairwise cosines of labelled vectors: a ``cosine`` result (``labels``, square ``matrix``).

    Labels are kept when they are numbers and written as strings otherwise; ``.table()`` is the
    square DataFrame indexed and labelled by them.

    Example:
        >>> cosine_table({"power": power_vec, "wealth": wealth_vec}).table().loc["power", "wealth"]
        0.43
    """
    labels, unit = _stack(vectors)
    mat = _round(unit @ unit.T)  # (n, n)
    return result(COSINE, labels=[_json_label(x) for x in labels],
                  matrix=[[float(x) for x in row] for row in mat.numpy()])


def cosine_pairs(vectors: Mapping[Any, VectorLike]) -> pd.DataFrame:
    """One row per unordered pair ``a < b`` (in the mapping's order): columns ``a, b, cosine``.

    A long view of ``cosine_table`` for reading (labels as given).
    """
    labels = list(vectors)
    matrix = cosine_table(vectors)["matrix"]
    rows = [{"a": labels[i], "b": labels[j], "cosine": matrix[i][j]}
            for i in range(len(labels)) for j in range(i + 1, len(labels))]
    return pd.DataFrame(rows, columns=["a", "b", "cosine"])


def method_cosines(a: Mapping[int, VectorLike], b: Mapping[int, VectorLike],
                   names: tuple[str, str] = ("a", "b")) -> Result:
    """Per layer, the cosine between two methods' vectors (e.g. BiPO vs CAA) and their norms.

    Args:
        a, b: vectors keyed by layer; only layers present in both are compared.
        names: method names used in the column names (``norm_<name>``).

    Returns:
        A ``cosine_methods`` result; its table has columns ``layer, cosine, norm_<a>, norm_<b>``, one
        row per shared layer, sorted by layer.
    """
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError(f"no layer in common: {sorted(a)} vs {sorted(b)}")
    rows = []
    for layer in shared:
        ta, tb = _tensor(f"{names[0]}@{layer}", a[layer]), _tensor(f"{names[1]}@{layer}", b[layer])
        rows.append({"layer": int(layer), "cosine": cosine(ta, tb),
                     f"norm_{names[0]}": float(ta.norm()), f"norm_{names[1]}": float(tb.norm())})
    return result(COSINE_METHODS, rows=rows)


def layer_cosine_table(vectors_by_layer: Mapping[int, VectorLike]) -> Result:
    """Layer x layer cosines for vectors extracted at every layer (keys sorted): a ``cosine`` result."""
    return cosine_table({int(k): vectors_by_layer[k] for k in sorted(vectors_by_layer)})
