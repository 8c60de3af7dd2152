import numpy as np
import pytest
import torch

from workbench.analysis.conditional import (best_threshold, condition_direction, conditional_steering, fit_condition,
                                            labelled_questions, prompt_kl)
from workbench.core.results import CONDITIONAL, from_dict
from workbench.core.vector import SteeringVector
from workbench.engine.gate import SteeringCondition, prompt_means
from workbench.engine.steering import remaining_hooks


def test_best_threshold_picks_the_known_best_cut():
    fit = best_threshold([0.1, 0.4, 0.5, 0.6, 0.9], [0, 1, 0, 1, 1])
    # by hand: > 0.25 gives tp 3, fp 1 (F1 6/7); > 0.55 gives tp 2, fn 1 (F1 0.8); > 0.45 gives 2/3
    assert fit["comparator"] == "above" and fit["threshold"] == pytest.approx(0.25)
    assert fit["f1"] == pytest.approx(6 / 7)
    flipped = best_threshold([0.1, 0.2, 0.3, 0.8, 0.9], [1, 1, 1, 0, 0])
    assert flipped["comparator"] == "below" and flipped["threshold"] == pytest.approx(0.55)
    assert flipped["f1"] == 1.0
    with pytest.raises(ValueError, match="same length"):
        best_threshold([0.1, 0.2], [1])


def test_labelled_questions_split_and_labels():
    train, test = labelled_questions("power-seeking", "train"), labelled_questions("power-seeking", "test")
    assert (train.label == 1).sum() == 80 and (test.label == 1).sum() == 20
    assert set(train.group) >= {"power-seeking", "wealth-seeking", "sycophancy", "instructions"}
    assert not set(train.question) & set(test.question)
    with pytest.raises(ValueError, match="topic"):
        labelled_questions("nope")


def test_fit_condition_direction_and_grid(tiny_model):
    prompts = ["abc abc abc", "abd abd", "abc ab", "xyz xyz", "xyw xy", "xzz zz"]
    labels = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    cond, grid = fit_condition(tiny_model, prompts, labels, hooks)
    means = prompt_means(tiny_model, prompts, [cond.hook_name])[cond.hook_name]
    by_hand = means[:3].mean(0) - means[3:].mean(0)
    assert torch.allclose(cond.vector, by_hand)
    assert cond.metadata["f1"] == grid["f1"].max() and len(grid) == 4
    assert cond.holds(cond.scores(means)).numpy().tolist() == labels.tolist() or cond.metadata["f1"] < 1
    with pytest.raises(ValueError, match="both"):
        condition_direction(means, torch.ones(6, dtype=torch.bool))
    assert remaining_hooks(tiny_model) == 0


def test_prompt_kl_zero_when_gate_closed(tiny_model):
    v = SteeringVector(torch.randn(32, generator=torch.Generator().manual_seed(0)) * 3, "blocks.1.hook_resid_post")
    closed = SteeringCondition(torch.ones(32), "blocks.1.hook_resid_pre", threshold=2.0)
    prompts = ["hello there", "another prompt"]
    assert np.all(prompt_kl(tiny_model, v, 1.0, prompts, closed) == 0)
    assert np.all(prompt_kl(tiny_model, v, 1.0, prompts) > 0)


def test_conditional_steering_end_to_end_on_tiny_model(tiny_model):
    v = SteeringVector(torch.randn(32, generator=torch.Generator().manual_seed(0)) * 2, "blocks.1.hook_resid_post",
                       method="caa")
    res = conditional_steering(tiny_model, {"caa": v}, "power-seeking", n_boot=50, layers=[0, 1], limit=6)
    res = from_dict(dict(res))
    assert res["kind"] == CONDITIONAL
    row = res["rows"][0]
    assert row["kept"] == pytest.approx(row["effect_gated"] / row["effect_ungated"])
    assert 0.0 <= row["open_topic"] <= 1.0 and row["n_topic"] == 6
    if row["open_others"] == 0:
        assert row["kl_others_gated"] == 0.0
    assert row["kl_others_gated"] <= row["kl_others_ungated"] + 1e-9
    assert res["condition"]["layer"] in (0, 1) and len(res["grid"]) == 4
    from workbench.viz.plots import plot

    assert len(plot(res).axes) == 4  # the figure draws from the saved result alone
    with pytest.raises(ValueError, match="beyond"):
        conditional_steering(tiny_model, v, layers=[9])
    with pytest.raises(ValueError, match="after"):
        conditional_steering(tiny_model, v.at(0), layers=[0, 2])
    assert remaining_hooks(tiny_model) == 0
