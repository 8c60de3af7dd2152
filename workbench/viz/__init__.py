"""Visualisation: one figure per result kind (``plot``), the figures of a results directory, markdown
reports, and the interactive steering explorer.

Modules: ``style`` (palette, paper style, ``save_figure``), ``tables`` (reading a result's tables),
``curves``, ``layers``, ``comparisons`` and ``mechanism`` (the ``plot_*`` functions by concept), ``plots`` (``plot``
and ``PLOTS``, the dispatch on ``kind``), ``figures`` (``write_figures``), ``report`` (markdown
tables), ``widgets`` (``SteeringExplorer``).
"""

from workbench.viz.comparisons import plot_composition, plot_lora_transfer, plot_transfer
from workbench.viz.conditional import plot_conditional
from workbench.viz.curves import plot_cost_effect, plot_multiplier_curves, plot_refusal, plot_training_curves
from workbench.viz.figures import figures_for, write_figures
from workbench.viz.layers import (plot_cosine_heatmap, plot_layer_sweep, plot_logit_lens_layers,
                                  plot_logit_lens_tokens, plot_method_cosine)
from workbench.viz.mechanism import (plot_activation_patching, plot_attention_shift, plot_direct_logit_attribution,
                                     plot_mechanism_routes)
from workbench.viz.plots import PLOTS, plot
from workbench.viz.prompting import plot_prompting
from workbench.viz.report import markdown_table
from workbench.viz.style import METHOD_COLORS, OKABE_ITO, method_color, paper_style, pretty_token, save_figure
from workbench.viz.widgets import SteeringExplorer

__all__ = ["METHOD_COLORS", "OKABE_ITO", "PLOTS", "SteeringExplorer", "figures_for", "markdown_table", "method_color",
           "paper_style", "plot", "plot_activation_patching", "plot_attention_shift", "plot_composition", "plot_conditional",
           "plot_cosine_heatmap", "plot_cost_effect", "plot_direct_logit_attribution", "plot_layer_sweep",
           "plot_logit_lens_layers", "plot_logit_lens_tokens", "plot_lora_transfer", "plot_mechanism_routes", "plot_method_cosine",
           "plot_multiplier_curves", "plot_prompting", "plot_refusal", "plot_training_curves", "plot_transfer", "pretty_token",
           "save_figure", "write_figures"]
