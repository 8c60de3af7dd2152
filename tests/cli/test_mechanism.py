"""``workbench mechanism`` (workbench.cli.mechanism, workbench.studies.run_mechanism): flags to the run config,
and one end-to-end run of every analysis on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

import workbench.studies.run_mechanism as run_mechanism
from conftest import make_tiny_model
from workbench.cli.main import main
from workbench.core.vector import SteeringVector
from workbench.engine.steering import remaining_hooks
from workbench.studies.runs import ModelOptions, RunError


def test_flags_reach_the_run_config(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(run_mechanism, "mechanism_run", lambda config, log: calls.append(config) or {})
    assert main(["mechanism", "--vector", "a", "--vector", "b", "--topic", "power-seeking", "--analysis", "dla",
                 "--analysis", "attention", "routes", "--multiplier", "2", "--pairs", "6", "--out", "o"]) == 0
    [config] = calls
    assert config.vector == ["a", "b"] and config.behavior == "power-seeking" and config.multiplier == 2.0
    assert list(config.analysis) == ["dla", "attention", "routes"] and config.pairs == 6 and config.figures
    main(["mechanism", "--vector", "a", "--behavior", "power-seeking", "--out", "o"])
    assert tuple(calls[-1].analysis) == ("all",) and calls[-1].pairs == 20  # the run config's defaults
    with pytest.raises(SystemExit):  # argparse refuses an unknown analysis
        main(["mechanism", "--vector", "a", "--behavior", "x", "--analysis", "lens", "--out", "o"])
    assert "invalid choice: 'lens'" in capsys.readouterr().err


def test_chosen_analyses_order_and_routes():
    assert run_mechanism.chosen_analyses(["all"], 1) == ["patching", "attribution", "dla", "attention"]
    assert run_mechanism.chosen_analyses(["routes", "dla"], 2) == ["patching", "dla", "routes"]  # routes need patching
    with pytest.raises(RunError, match="routes compares vectors"):
        run_mechanism.chosen_analyses(["routes"], 1)


def test_bad_options_are_refused_before_the_model_loads(monkeypatch, capsys):
    monkeypatch.setattr(ModelOptions, "load_model", lambda self: pytest.fail("no model may load"))
    assert main(["mechanism", "--vector", "a", "--behavior", "nope", "--out", "o"]) == 2
    assert "--behavior 'nope': not an embedded behavior" in capsys.readouterr().err
    assert main(["mechanism", "--vector", "a", "--behavior", "power-seeking", "--multiplier", "0", "--out", "o"]) == 2
    assert main(["mechanism", "--vector", "missing", "--behavior", "power-seeking", "--out", "o"]) == 2
    assert "--vector" in capsys.readouterr().err


@pytest.mark.tl3  # patching runs blocks from a cached residual (start_at_layer): HookedTransformer only
def test_every_analysis_of_two_vectors_on_a_tiny_model(monkeypatch, tmp_path, capsys):
    model = make_tiny_model(n_layers=2)
    monkeypatch.setattr(ModelOptions, "load_model", lambda self: model)
    for i, method in enumerate(("bipo", "caa")):
        g = torch.Generator().manual_seed(i)
        SteeringVector(torch.randn(model.cfg.d_model, generator=g) * 2, "blocks.0.hook_resid_post",
                       method=method).save(tmp_path / method)
    out = tmp_path / "mech"
    assert main(["mechanism", "--vector", str(tmp_path / "bipo"), "--vector", str(tmp_path / "caa"),
                 "--behavior", "power-seeking", "--pairs", "3", "--n-boot", "20", "--top-k", "2",
                 "--out", str(out)]) == 0
    names = sorted(p.name for p in out.glob("*.json"))
    assert names == sorted([f"{m}_{k}.json" for m in ("bipo", "caa") for k in
                            ("activation_patching", "attribution_patching", "direct_logit_attribution",
                             "attention_shift")] + ["mechanism_routes.json"])
    attribution = json.loads((out / "bipo_attribution_patching.json").read_text())
    assert attribution["agreement"] and attribution["data"] == {"behavior": "power-seeking", "split": "test",
                                                                "pairs": 3}
    shift = json.loads((out / "caa_attention_shift.json").read_text())
    assert len(shift["heads"]) == 2  # the top-k heads of the exact patching
    assert len(list((out / "figures").glob("*.png"))) == len(names)
    stdout = capsys.readouterr().out
    assert "bipo_activation_patching: total effect" in stdout and "mechanism_routes: cosine" in stdout
    assert remaining_hooks(model) == 0
