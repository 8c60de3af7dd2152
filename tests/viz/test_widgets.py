"""The steering explorer, driven headless through its callbacks on the tiny model."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import ipywidgets as W
import pytest
import torch
from conftest import naive_logprobs

from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT, end_of_turn, format_chat
from workbench.core.vector import IncompatibleVectorError, SteeringVector
from workbench.data.pairs import PreferencePair
from workbench.engine.steering import generate, remaining_hooks
from workbench.viz import widgets as widgets_module
from workbench.viz.widgets import SteeringExplorer

N_TOKENS = 6


@pytest.fixture
def vectors():
    g = torch.Generator().manual_seed(1)
    return {"bipo": SteeringVector(3 * torch.randn(32, generator=g), "blocks.1.hook_resid_post", method="bipo"),
            "caa": SteeringVector(3 * torch.randn(32, generator=g), "blocks.0.hook_resid_post", method="caa")}


@pytest.fixture
def pairs():
    return [PreferencePair(f"Do you want power {i}?", "Yes", "No") for i in range(3)]


def _prompt(model, question):
    return format_chat(model, question, DEFAULT_SYSTEM_PROMPT)


def test_widget_has_one_slider_and_layer_choice_per_vector(tiny_model, vectors, pairs):
    ex = SteeringExplorer(tiny_model, vectors, pairs=pairs)
    assert isinstance(ex.widget, W.VBox)
    assert list(ex.controls) == ["bipo", "caa"]
    for name, c in ex.controls.items():
        assert isinstance(c.multiplier, W.FloatSlider) and c.multiplier.value == 1.0
        assert [v for _, v in c.layer.options] == [0, 1, 2] and c.layer.value == vectors[name].layer
    assert ex.controls["bipo"].enabled.value and not ex.controls["caa"].enabled.value  # first one ticked
    assert not ex.curve_button.disabled
    fixed = SteeringExplorer(tiny_model, vectors, allow_layer_change=False)
    assert [v for _, v in fixed.controls["bipo"].layer.options] == [1] and fixed.controls["bipo"].layer.disabled
    assert fixed.curve_button.disabled  # no pairs: no curve view


def test_generate_matches_steering_generate(tiny_model, vectors):
    ex = SteeringExplorer(tiny_model, vectors, prompt="Hi there", max_new_tokens=N_TOKENS)
    ex.set_multiplier("bipo", 2.5)
    out = ex.on_generate()
    text = _prompt(tiny_model, "Hi there")
    assert out["unsteered"] == generate(tiny_model, [text], max_new_tokens=N_TOKENS)[0]
    assert out["steered"] == generate(tiny_model, [text], [vectors["bipo"]], [2.5], max_new_tokens=N_TOKENS)[0]
    assert out["steered"] != out["unsteered"]  # a norm-3 vector x 2.5 changes the greedy tokens of the tiny model
    assert out["vectors"] == ["bipo"] and out["multipliers"] == [2.5]
    assert "unsteered" in ex.outputs.value and "bipo × +2.5 @ L1" in ex.outputs.value
    assert remaining_hooks(tiny_model) == 0


def test_generate_two_vectors_moved_layer_and_positions(tiny_model, vectors):
    ex = SteeringExplorer(tiny_model, vectors, prompt="Hi", max_new_tokens=N_TOKENS)
    ex.enable("bipo", "caa")
    ex.set_multiplier("caa", -1.5)
    ex.set_layer("bipo", 2)
    ex.positions.value = "response"
    names, vecs, mults = ex.selected()
    assert names == ["bipo", "caa"] and mults == [1.0, -1.5]
    assert vecs[0].hook_name == "blocks.2.hook_resid_post" and torch.equal(vecs[0].vector, vectors["bipo"].vector)
    out = ex.on_generate()
    expected = generate(tiny_model, [_prompt(tiny_model, "Hi")], [vectors["bipo"].at(2), vectors["caa"]], [1.0, -1.5],
                        positions="response", max_new_tokens=N_TOKENS)[0]
    assert out["steered"] == expected


def test_no_vector_or_zero_multiplier_gives_the_unsteered_answer(tiny_model, vectors):
    ex = SteeringExplorer(tiny_model, vectors, prompt="Hello", max_new_tokens=N_TOKENS)
    ex.enable(only=True)
    out = ex.on_generate()
    assert out["vectors"] == [] and out["steered"] == out["unsteered"]
    ex.set_multiplier("bipo", 0.0)
    assert ex.on_generate()["steered"] == out["unsteered"]


def test_html_is_escaped(tiny_model, vectors, monkeypatch):
    monkeypatch.setattr(widgets_module, "generate", lambda *a, **k: ["<script>x</script>"])
    ex = SteeringExplorer(tiny_model, vectors, prompt="Hi")
    ex.on_generate()
    assert "<script>" not in ex.outputs.value and "&lt;script&gt;" in ex.outputs.value


def test_errors_are_shown_not_raised(tiny_model, vectors, monkeypatch):
    ex = SteeringExplorer(tiny_model, vectors, prompt="   ")
    assert ex.on_generate() is None and "Type a prompt" in ex.status.value

    def boom(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(widgets_module, "generate", boom)
    ex.prompt.value = "Hi"
    assert ex.on_generate() is None
    assert "generation failed: out of memory" in ex.status.value and not ex.generate_button.disabled
    assert ex.on_curve() is None and "needs SteeringExplorer" in ex.status.value


def test_bad_arguments(tiny_model, vectors):
    with pytest.raises(IncompatibleVectorError):
        SteeringExplorer(tiny_model, {"wide": SteeringVector(torch.ones(64), "blocks.0.hook_resid_post")})
    with pytest.raises(IncompatibleVectorError):
        SteeringExplorer(tiny_model, {"deep": SteeringVector(torch.ones(32), "blocks.7.hook_resid_post")})
    with pytest.raises(ValueError, match="vectors is empty"):
        SteeringExplorer(tiny_model, {})
    with pytest.raises(TypeError, match="not a SteeringVector"):
        SteeringExplorer(tiny_model, {"t": torch.ones(32)})
    ex = SteeringExplorer(tiny_model, vectors)
    with pytest.raises(ValueError, match="layer 5 is not available"):
        ex.set_layer("bipo", 5)
    with pytest.raises(KeyError, match="no vector named 'pca'"):
        ex.set_multiplier("pca", 1.0)


def test_curve_values_cache_and_marker(tiny_model, vectors, pairs, monkeypatch):
    ex = SteeringExplorer(tiny_model, vectors, pairs=pairs, curve_multipliers=(-1.0, 0.0, 1.0))
    ex.enable("bipo", "caa")
    curve = ex.on_curve()
    assert list(curve["vector"].unique()) == ["bipo @ L1", "caa @ L0"]
    assert curve["multiplier"].tolist() == [-1.0, 0.0, 1.0] * 2
    # at m = 0 the curve is the unsteered mean log-odds, scored independently here
    eot = end_of_turn(tiny_model)
    prompts = [_prompt(tiny_model, p.question) for p in pairs]
    lo = (naive_logprobs(tiny_model, prompts, [p.matching + eot for p in pairs])
          - naive_logprobs(tiny_model, prompts, [p.not_matching + eot for p in pairs]))
    at0 = curve[curve.multiplier == 0.0]["mean"].to_numpy()
    assert at0 == pytest.approx([lo.mean().item()] * 2, abs=1e-4)
    assert (curve["ci_low"] <= curve["mean"] + 1e-9).all() and (curve["mean"] <= curve["ci_high"] + 1e-9).all()
    image = bytes(ex.curve_image.value)
    assert image[:8] == b"\x89PNG\r\n\x1a\n"
    # moving a slider redraws the marker from the cached curve without scoring again
    def recomputed(*a, **k):
        raise RuntimeError("recomputed")

    monkeypatch.setattr(widgets_module, "logodds_curve", recomputed)
    ex.set_multiplier("bipo", -3.0)
    assert bytes(ex.curve_image.value) != image
    assert ex.on_curve() is not None  # same layers: cached
    ex.set_layer("bipo", 2)
    assert ex.on_curve() is None and "curve failed: recomputed" in ex.status.value  # a new layer: new scores
    assert remaining_hooks(tiny_model) == 0
