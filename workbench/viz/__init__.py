"""Plots (dispatching on a result's kind), the figures of a results directory, reports, the explorer widget."""

from workbench.viz.figures import write_figures
from workbench.viz.plots import plot, plot_composition, plot_cosine_heatmap, plot_cost_effect, plot_layer_sweep, plot_logit_lens_layers, plot_logit_lens_tokens, plot_method_cosine, plot_lora_transfer, plot_multiplier_curves, plot_refusal, plot_training_curves, plot_transfer, save_figure
from workbench.viz.widgets import SteeringExplorer

__all__ = ["SteeringExplorer", "plot", "plot_composition", "plot_cosine_heatmap", "plot_cost_effect", "plot_layer_sweep", "plot_logit_lens_layers", "plot_logit_lens_tokens", "plot_lora_transfer", "plot_method_cosine", "plot_multiplier_curves", "plot_refusal", "plot_training_curves", "plot_transfer", "save_figure", "write_figures"]
