"""One figure per result, chosen by the result's ``kind`` alone (the table ``PLOTS``).

Every analysis returns a result (``workbench.core.results``: a ``kind``, a schema version, tidy
tables), and every ``plot_*`` function draws one kind: ``plot(result)`` looks the kind up in
``PLOTS`` and returns that function's ``Figure``, so a notebook, the ``figures`` command and a report
draw a saved JSON file and a fresh result the same way. The figures themselves live by concept:
``workbench.viz.curves`` (against the multiplier or step), ``workbench.viz.layers`` (sweep, cosine,
logit lens) and ``workbench.viz.comparisons`` (composition, transfer, LoRA); their style is
``workbench.viz.style``. Steering vectors: BiPO, Cao et al. 2024 (arXiv 2406.00045); CAA, Rimsky et al.
2023 (arXiv 2312.06681).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from matplotlib.figure import Figure

from workbench.core import results
from workbench.core.results import ResultFormatError
from workbench.viz.comparisons import plot_composition, plot_lora_transfer, plot_transfer
from workbench.viz.conditional import plot_conditional
from workbench.viz.comparisons import plot_entanglement
from workbench.viz.mechanism import (plot_activation_patching, plot_attention_shift, plot_direct_logit_attribution,
                                     plot_mechanism_routes)
from workbench.viz.curves import plot_cost_effect, plot_multiplier_curves, plot_refusal, plot_training_curves
from workbench.viz.prompting import plot_prompting
from workbench.viz.layers import (plot_cosine_heatmap, plot_layer_sweep, plot_logit_lens_layers,
                                  plot_logit_lens_tokens, plot_method_cosine)

#: result ``kind`` -> the function drawing its main figure (kinds not listed, e.g. study_summary, have none)
PLOTS: dict[str, Callable[..., Figure]] = {
    results.EVAL: plot_multiplier_curves,
    results.SWEEP: plot_layer_sweep,
    results.COSINE: plot_cosine_heatmap,
    results.COSINE_METHODS: plot_method_cosine,
    results.LOGIT_LENS_TOKENS: plot_logit_lens_tokens,
    results.LOGIT_LENS_LAYERS: plot_logit_lens_layers,
    results.COMPOSITION: plot_composition,
    results.TRANSFER_LAYERS: plot_transfer,
    results.TRANSFER_MODEL: plot_transfer,
    results.TRANSFER_LORA: plot_lora_transfer,
    results.BIPO_HISTORY: plot_training_curves,
    results.REFUSAL: plot_refusal,
    results.MATCHED_COST: plot_cost_effect,
    results.PROMPTING: plot_prompting,
    results.CONDITIONAL: plot_conditional,
    results.ENTANGLEMENT: plot_entanglement,
    results.ACTIVATION_PATCHING: plot_activation_patching,
    results.ATTRIBUTION_PATCHING: plot_activation_patching,
    results.DIRECT_LOGIT_ATTRIBUTION: plot_direct_logit_attribution,
    results.ATTENTION_SHIFT: plot_attention_shift,
    results.MECHANISM_ROUTES: plot_mechanism_routes,
}


def plot(result: Any, **kwargs: Any) -> Figure:
    """The main figure of a result, chosen by its ``kind`` (``PLOTS``); ``kwargs`` go to that ``plot_*``.

    Args:
        result: a result (``workbench.core.results.Result``, or the mapping loaded from its JSON).
            An eval result draws ``metric="logodds"`` unless told otherwise.
        **kwargs: options of the ``plot_*`` function of the kind.

    Example:
        >>> fig = plot(load_result("results/full/eval/power-seeking.json"), metric="ab")

    Raises:
        ResultFormatError: not a result, an unknown kind or a newer schema version, or a kind with no figure.
    """
    if not isinstance(result, (Mapping, list)):  # a list: a version-1 BiPO history file
        raise ResultFormatError(f"plot() draws a result with a 'kind' (workbench.core.results), "
                                f"not a {type(result).__name__}")
    res = results.from_dict(result)
    if res.kind not in PLOTS:
        raise ResultFormatError(f"a {res.kind} result has no figure")
    return PLOTS[res.kind](res, **kwargs)


__all__ = ["PLOTS", "plot"]
