"""plot(result): one figure per result, chosen by its kind alone (workbench.viz.plots)."""

from __future__ import annotations

import pandas as pd
import pytest
from viz_results import (
    cosine_result,
    eval_result,
    history,
    history_result,
    no_pyplot_leaks,
    transfer_model_v1,
)

from workbench.core import results as R
from workbench.viz import plots as P

assert no_pyplot_leaks  # autouse: no figure may be left in pyplot's list


def test_every_kind_with_a_figure_is_in_the_table():
    assert set(P.PLOTS) | {R.STUDY_SUMMARY} == set(R.SCHEMAS)
    assert P.PLOTS[R.TRANSFER_LAYERS] is P.PLOTS[R.TRANSFER_MODEL]


def test_plot_dispatches_on_kind_alone():
    assert P.plot(eval_result()).axes[0].get_xlabel() == "multiplier m"
    assert len(P.plot(eval_result(), metric="ab").axes[0].collections) == 0  # ab rows carry no interval
    assert P.plot(transfer_model_v1()).axes[0].get_legend() is not None  # v1 kind "transfer" migrated
    assert len(P.plot(cosine_result()).axes[0].texts) == 9
    assert P.plot(history_result()).axes[0].get_ylabel() == "BiPO loss"
    assert P.plot(history()).axes[0].get_ylabel() == "BiPO loss"  # a v1 history file: a bare list of steps


def test_plot_errors():
    with pytest.raises(R.ResultFormatError, match="unknown result kind 'similarity'"):
        P.plot({"kind": "similarity", "rows": []})  # an old alias is not read
    with pytest.raises(R.ResultFormatError, match="not a DataFrame"):
        P.plot(pd.DataFrame({"multiplier": [0.0], "mean": [1.0]}))
    with pytest.raises(R.ResultFormatError, match="has no figure"):
        P.plot({"kind": "study_summary", "results": [], "figures": []})
    with pytest.raises(R.ResultFormatError, match="newer than this workbench reads"):
        P.plot({**eval_result(), "schema_version": R.SCHEMA_VERSION + 1})


def test_plot_of_a_training_result_through_its_result():
    import torch

    from workbench.core.vector import SteeringVector
    from workbench.train import bipo

    trained = bipo.TrainResult(SteeringVector(torch.ones(4), "blocks.0.hook_resid_post"), history(), [])
    assert P.plot(trained.to_dict()).axes[0].get_ylabel() == "BiPO loss"
    with pytest.raises(R.ResultFormatError, match="not a TrainResult"):
        P.plot(trained)