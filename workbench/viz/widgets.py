"""An interactive steering explorer for Jupyter, built with ipywidgets.

Activation steering (BiPO, Cao et al. 2024, arXiv 2406.00045; CAA, Rimsky et al. 2023,
arXiv 2312.06681) has one knob per vector: the multiplier ``m`` of ``m * v``. ``SteeringExplorer``
puts those knobs on sliders: tick the vectors to apply, set each multiplier (and, for a vector at a
block hook, the layer it is applied at: ``SteeringVector.at(layer)``), type a prompt and compare the
unsteered and steered answers side by side. Given preference pairs it also draws the held-out
log-odds ``log p(matching) - log p(not matching)`` against the multiplier for each ticked vector
(``workbench.evaluate.preference.logodds_curve``); moving a slider moves the vector's marker along its curve
without recomputing it.

All logic lives in the class; its callbacks (``on_generate``, ``on_curve``, ``set_multiplier``,
``set_layer``) run headless as well, so tests drive the explorer without a browser::

    explorer = SteeringExplorer(model, {"bipo": v_bipo, "caa": v_caa}, pairs=test_pairs)
    explorer.widget                    # display it in a notebook
    explorer.set_multiplier("bipo", 2.0)
    explorer.on_generate()             # {"unsteered": "...", "steered": "..."}
"""

from __future__ import annotations

import html
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd

from workbench.core import results
from workbench.core.backend import Model
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT, format_chat
from workbench.core.vector import SteeringVector
from workbench.engine import generate
from workbench.evaluate import logodds_curve
from workbench.viz.curves import plot_multiplier_curves
from workbench.viz.style import paper_style

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "Would you like to have more influence over the world?"
_POSITIONS = ("all", "response", "prompt")


@dataclass
class VectorControls:
    """The widgets of one vector: apply it or not, its multiplier, its layer."""

    enabled: W.Checkbox
    multiplier: W.FloatSlider
    layer: W.Dropdown

    @property
    def box(self) -> W.HBox:
        return W.HBox([self.enabled, self.multiplier, self.layer])


class SteeringExplorer:
    """Steer a model interactively: sliders per vector, prompt box, side-by-side generations, curves.

    Args:
        model: the model (never changed: hooks exist only while a callback runs).
        vectors: ``{name: SteeringVector}``; each must fit the model.
        pairs: optional held-out preference pairs for the log-odds curve view.
        system_prompt: system turn of the chat prompt (BiPO's by default; None for none).
        prompt: initial text of the prompt box.
        multiplier_range: ``(min, max)`` of every slider.
        multiplier_step: slider step.
        initial_multiplier: starting value of every slider.
        curve_multipliers: multipliers of the curve view.
        max_curve_pairs: the curve uses at most this many pairs (keeps it interactive on CPU).
        max_new_tokens: initial generation length.
        allow_layer_change: offer a layer choice per vector (moving it with ``.at(layer)``).
        batch_size: pairs per forward pass in the curve view.

    Attributes:
        widget: the ipywidgets container to display.
        controls: ``{name: VectorControls}``.
        last_generation: the last ``on_generate`` result.
        last_curve: the last ``on_curve`` table (``vector, multiplier, mean, ci_low, ci_high, ...``).
    """

    def __init__(self, model: Model, vectors: Mapping[str, SteeringVector],
                 pairs: Sequence[Any] | None = None, *, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                 prompt: str = DEFAULT_PROMPT, multiplier_range: tuple[float, float] = (-4.0, 4.0),
                 multiplier_step: float = 0.25, initial_multiplier: float = 1.0,
                 curve_multipliers: Sequence[float] = (-2.0, -1.0, 0.0, 1.0, 2.0), max_curve_pairs: int = 16,
                 max_new_tokens: int = 48, allow_layer_change: bool = True, batch_size: int = 8):
        if not vectors:
            raise ValueError("vectors is empty: give at least one {name: SteeringVector}")
        lo, hi = (float(x) for x in multiplier_range)
        if not lo < hi:
            raise ValueError(f"multiplier_range={multiplier_range!r}: min must be below max")
        for name, vec in vectors.items():
            if not isinstance(vec, SteeringVector):
                raise TypeError(f"vectors[{name!r}] is a {type(vec).__name__}, not a SteeringVector")
            vec.check_compatible(model)
        self.model = model
        self.vectors = dict(vectors)
        self.pairs = list(pairs)[: int(max_curve_pairs)] if pairs is not None else None
        self.system_prompt = system_prompt
        self.curve_multipliers = [float(m) for m in curve_multipliers]
        self.batch_size = batch_size
        self.last_generation: dict[str, Any] | None = None
        self.last_curve: pd.DataFrame | None = None
        self._curves: dict[tuple[str, str], pd.DataFrame] = {}  # (name, hook_name) -> curve rows

        self.controls: dict[str, VectorControls] = {}
        for i, (name, vec) in enumerate(self.vectors.items()):
            layers = list(range(model.cfg.n_layers)) if allow_layer_change else [vec.layer]
            c = VectorControls(
                enabled=W.Checkbox(value=i == 0, description=name, indent=False, layout=W.Layout(width="160px")),
                multiplier=W.FloatSlider(value=min(max(initial_multiplier, lo), hi), min=lo, max=hi,
                                         step=multiplier_step, description="m", continuous_update=False,
                                         readout_format=".2f", layout=W.Layout(width="320px")),
                layer=W.Dropdown(options=[(f"layer {x}" + (" (trained)" if x == vec.layer else ""), x)
                                          for x in layers], value=vec.layer, description="",
                                 disabled=not allow_layer_change, layout=W.Layout(width="150px")),
            )
            c.multiplier.observe(self._on_slider, names="value")
            c.enabled.observe(self._on_slider, names="value")
            c.layer.observe(self._on_slider, names="value")
            self.controls[name] = c

        self.prompt = W.Textarea(value=prompt, description="prompt", layout=W.Layout(width="100%", height="70px"))
        self.max_new_tokens = W.IntSlider(value=max_new_tokens, min=1, max=max(256, max_new_tokens), step=1,
                                         description="tokens")
        self.positions = W.Dropdown(options=_POSITIONS, value="all", description="positions")
        self.generate_button = W.Button(description="Generate", button_style="primary", icon="play")
        self.curve_button = W.Button(description="Update curve", icon="line-chart", disabled=self.pairs is None)
        self.status = W.HTML(value="")
        self.outputs = W.HTML(value="")
        self.curve_image = W.Image(format="png", layout=W.Layout(max_width="480px"))
        self.generate_button.on_click(self.on_generate)
        self.curve_button.on_click(self.on_curve)

        rows: list[W.Widget] = [W.HTML("<b>Steering vectors</b>"), *(c.box for c in self.controls.values()),
                                self.prompt, W.HBox([self.max_new_tokens, self.positions]),
                                W.HBox([self.generate_button, self.curve_button]), self.status, self.outputs]
        if self.pairs is not None:
            rows += [W.HTML(f"<b>Held-out log-odds</b> ({len(self.pairs)} pairs)"), self.curve_image]
        self.widget = W.VBox(rows)

    # ------------------------------------------------------------------ state
    def _vector(self, name: str) -> SteeringVector:
        vec = self.vectors[name]
        layer = self.controls[name].layer.value
        return vec if layer == vec.layer else vec.at(int(layer))

    def selected(self) -> tuple[list[str], list[SteeringVector], list[float]]:
        """Names, vectors (at their chosen layers) and multipliers of the ticked vectors."""
        names = [n for n, c in self.controls.items() if c.enabled.value]
        return names, [self._vector(n) for n in names], [float(self.controls[n].multiplier.value) for n in names]

    def set_multiplier(self, name: str, multiplier: float, enable: bool = True) -> None:
        """Set a vector's slider (ticking it unless ``enable=False``)."""
        c = self._controls(name)
        c.multiplier.value = float(multiplier)
        if enable:
            c.enabled.value = True

    def set_layer(self, name: str, layer: int) -> None:
        """Apply a vector at another layer (same hook point)."""
        c = self._controls(name)
        allowed = [v for _, v in c.layer.options]
        if layer not in allowed:
            raise ValueError(f"layer {layer} is not available for {name!r}; choose one of {allowed}")
        c.layer.value = int(layer)

    def enable(self, *names: str, only: bool = False) -> None:
        """Tick the given vectors (and untick all others when ``only``)."""
        for n in names:
            self._controls(n)
        for n, c in self.controls.items():
            if n in names:
                c.enabled.value = True
            elif only:
                c.enabled.value = False

    def _controls(self, name: str) -> VectorControls:
        if name not in self.controls:
            raise KeyError(f"no vector named {name!r}; the explorer has {list(self.controls)}")
        return self.controls[name]

    def _set_status(self, text: str, error: bool = False) -> None:
        colour = "#D55E00" if error else "#555"
        self.status.value = f'<span style="color:{colour}">{html.escape(text)}</span>'

    # ------------------------------------------------------------------ generation
    def on_generate(self, _button: Any = None) -> dict[str, Any] | None:
        """Generate the unsteered and the steered answer to the prompt box and show them side by side.

        Returns:
            ``{"prompt", "vectors", "multipliers", "unsteered", "steered"}``, or None after an
            error (shown in the status line).
        """
        names, vecs, mults = self.selected()
        question = self.prompt.value.strip()
        if not question:
            self._set_status("Type a prompt first.", error=True)
            return None
        self.generate_button.disabled = True
        self._set_status("generating ...")
        try:
            text = format_chat(self.model, question, self.system_prompt)
            n = int(self.max_new_tokens.value)
            unsteered = generate(self.model, [text], max_new_tokens=n)[0]
            steered = generate(self.model, [text], vecs, mults, positions=self.positions.value,
                               max_new_tokens=n)[0] if vecs else unsteered
        except Exception as exc:  # shown to the user; a widget callback has nowhere else to report
            logger.exception("generation failed")
            self._set_status(f"generation failed: {exc}", error=True)
            return None
        finally:
            self.generate_button.disabled = False
        label = ", ".join(f"{n} × {m:+g} @ L{v.layer}" for n, v, m in zip(names, vecs, mults)) or "no vector ticked"
        self.last_generation = {"prompt": question, "vectors": names, "multipliers": mults,
                                "unsteered": unsteered, "steered": steered}
        self.outputs.value = _side_by_side(("unsteered", unsteered), (f"steered: {label}", steered))
        self._set_status("")
        return self.last_generation

    # ------------------------------------------------------------------ curves
    def _curve(self, name: str) -> pd.DataFrame:
        vec = self._vector(name)
        key = (name, vec.hook_name)
        if key not in self._curves:
            table = logodds_curve(self.model, {name: vec}, self.pairs, self.curve_multipliers, n_boot=200,
                                  system_prompt=self.system_prompt, batch_size=self.batch_size,
                                  progress=False).table("logodds")
            table = table.assign(vector=f"{name} @ L{vec.layer}", hook_name=vec.hook_name)
            self._curves[key] = table.reset_index(drop=True)
        return self._curves[key]

    def on_curve(self, _button: Any = None) -> pd.DataFrame | None:
        """Compute (or reuse) the log-odds curve of each ticked vector at its chosen layer and draw it.

        Returns:
            The curve rows (``vector, multiplier, mean, ci_low, ci_high, win_rate ...``), or None
            without pairs, without a ticked vector, or after an error (shown in the status line).
        """
        if self.pairs is None:
            self._set_status("No pairs given: the curve view needs SteeringExplorer(..., pairs=...).", error=True)
            return None
        names, _, _ = self.selected()
        if not names:
            self._set_status("Tick a vector first.", error=True)
            return None
        self.curve_button.disabled = True
        self._set_status("scoring pairs ...")
        try:
            self.last_curve = pd.concat([self._curve(n) for n in names], ignore_index=True)
        except Exception as exc:
            logger.exception("curve failed")
            self._set_status(f"curve failed: {exc}", error=True)
            return None
        finally:
            self.curve_button.disabled = False
        self._draw_curve()
        self._set_status("")
        return self.last_curve

    def _on_slider(self, _change: Any = None) -> None:
        if self.last_curve is not None:
            self._draw_curve()

    def _draw_curve(self) -> None:
        """Redraw the cached curves with a marker at each ticked vector's current multiplier."""
        names, vecs, _ = self.selected()
        known = [self._curves[(n, v.hook_name)] for n, v in zip(names, vecs) if (n, v.hook_name) in self._curves]
        if not known:
            self.curve_image.value = b""
            return
        curve = results.result(results.EVAL, metrics={"logodds": pd.concat(known, ignore_index=True)})
        fig = plot_multiplier_curves(curve, metric="logodds")
        ax = fig.axes[0]
        lines = {line.get_label(): line for line in ax.get_lines()}
        with paper_style():
            for n, v in zip(names, vecs):
                curve = self._curves.get((n, v.hook_name))
                line = lines.get(f"{n} @ L{v.layer}")
                if curve is None or line is None:
                    continue
                m = float(self.controls[n].multiplier.value)
                c = curve.sort_values("multiplier")
                y = float(np.interp(m, c["multiplier"], c["mean"]))  # on the curve; outside: its end value
                ax.plot([m], [y], marker="o", markersize=7, markerfacecolor="none", markeredgewidth=1.4,
                        color=line.get_color(), label="_current")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=150)
        self.curve_image.value = buf.getvalue()


def _side_by_side(*panels: tuple[str, str]) -> str:
    """HTML: one column per ``(title, text)``, text escaped and wrapped."""
    cells = "".join(
        f'<div style="flex:1; min-width:0; padding:6px; border:1px solid #ddd; border-radius:4px">'
        f'<div style="font-weight:bold; margin-bottom:4px">{html.escape(title)}</div>'
        f'<div style="white-space:pre-wrap; font-family:monospace; font-size:90%">{html.escape(text)}</div></div>'
        for title, text in panels)
    return f'<div style="display:flex; gap:8px">{cells}</div>'
