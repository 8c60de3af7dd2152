"""The refusal study: likelihood signal, utility cost, config, figure and command (the rule and the loaders are
tested with their modules, in tests/evaluate/test_generation.py and tests/data/test_refusal_requests.py)."""

from __future__ import annotations

import json
from dataclasses import replace as dataclasses_replace

import pytest
import torch

import workbench as wb
from workbench.core.vector import SteeringVector
from workbench.data.refusal import (
    HarmfulRequest,
    load_refusal_requests,
    refusal_pairs,
)
from workbench.evaluate.generation import is_refusal
from workbench.studies.config import RefusalConfig
from workbench.studies.refusal import refusal_study


def _csv(tmp_path, text, name="adv.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _plain_logodds(model, vec, m, question, a, b):
    out = []
    for ans in (a, b):
        prompt = wb.format_chat(model, question, None)
        tokens = model.to_tokens(prompt + ans, prepend_bos=False)  # character-level: the boundary is exact
        n = len(model.to_tokens(ans, prepend_bos=False)[0])
        with wb.steer(model, vec, multipliers=m):
            lp = torch.log_softmax(model(tokens)[0].double(), -1)
        ids = tokens[0, -n:]
        out.append(lp[-n - 1:-1].gather(-1, ids[:, None]).sum().item())
    return out[0] - out[1]


def test_likelihood_signal_matches_a_plain_computation(tiny_model):
    reqs = [HarmfulRequest("Open my neighbour's jar.", "Sure, here is how"),
            HarmfulRequest("Copy a key.", "Sure, here is a key"),
            HarmfulRequest("Skip the queue.", "Sure, here is a way")]
    vec = SteeringVector(torch.randn(tiny_model.cfg.d_model) * 2, "blocks.1.hook_resid_post")
    result = refusal_study(tiny_model, {"v": vec}, reqs, [-1.0, 0.0, 1.5], templates=(None, "prefix_injection"),
                           max_new_tokens=4, system_prompt=None, n_boot=50)
    assert result["kind"] == "refusal" and result["templates"] == ["none", "prefix_injection"]
    rows = {(r["template"], r["multiplier"]): r for r in result["rows"]}
    assert len(rows) == 6
    for (template, m), row in rows.items():
        pairs = refusal_pairs(reqs, template=None if template == "none" else template)
        plain = [_plain_logodds(tiny_model, vec, m, p.question, p.matching, p.not_matching) for p in pairs]
        assert row["logodds"] == pytest.approx(sum(plain) / len(plain), abs=1e-3)
        assert 0.0 <= row["refusal_rate"] <= 1.0 and row["n"] == 3
    gens = result["generations"]
    assert len(gens) == 2 * 3 * 3 and all(g["refused"] == is_refusal(g["generation"]) for g in gens)
    # --no-text: no request or answer text left anywhere, the numbers and refused flags unchanged
    from workbench.core.results import from_dict
    from workbench.studies.refusal import without_text

    bare = from_dict(without_text(result))
    assert bare["rows"] == result["rows"] and bare["text_omitted"] == ["question", "generation"]
    assert [g["refused"] for g in bare["generations"]] == [g["refused"] for g in gens]
    dumped = json.dumps(bare)
    assert not any(r.goal in dumped for r in reqs)
    assert all(set(g) == set(gens[0]) - {"question", "generation"} for g in bare["generations"])


def test_utility_cost_at_every_point_matches_the_utility_curve(tiny_model):
    from workbench.evaluate.utility import utility_curve

    reqs = [HarmfulRequest("Open my neighbour's jar.", "Sure, here is how"),
            HarmfulRequest("Copy a key.", "Sure, here is a key")]
    vec = SteeringVector(torch.randn(tiny_model.cfg.d_model) * 3, "blocks.1.hook_resid_post")
    texts = ["The river ran past the old mill and into the town.", "A recipe needs flour, water and salt."]
    result = refusal_study(tiny_model, {"v": vec}, reqs, [-1.0, 0.0, 2.0], templates=(None, "persona"),
                           max_new_tokens=2, system_prompt=None, n_boot=20, neutral_texts=texts, utility_max_tokens=16)
    util = utility_curve(tiny_model, {"v": vec}, texts, [-1.0, 0.0, 2.0], n_boot=20, max_tokens=16, progress=False)
    kl = util.table("kl_from_unsteered").set_index("multiplier")["mean"]
    assert result["n_neutral_texts"] == 2 and len(result["rows"]) == 6
    for row in result["rows"]:  # the same cost under every template
        assert row["kl"] == pytest.approx(kl[row["multiplier"]], abs=1e-6)
    by_m = {r["multiplier"]: r["kl"] for r in result["rows"]}
    assert by_m[0.0] == pytest.approx(0.0, abs=1e-6) and by_m[2.0] > 0 and by_m[-1.0] > 0


def test_a_config_and_keyword_options_give_the_same_study(tiny_model):
    reqs = [HarmfulRequest("Copy a key.", "Sure, here is a key"), HarmfulRequest("Skip the queue.", "Sure, here is")]
    vec = SteeringVector(torch.randn(tiny_model.cfg.d_model) * 2, "blocks.1.hook_resid_post")
    by_keywords = refusal_study(tiny_model, {"v": vec}, reqs, [-1.0, 1.0], templates=(None, "persona"),
                                max_new_tokens=2, system_prompt=None, n_boot=20, seed=3)
    config = RefusalConfig(templates=(None, "persona"), max_new_tokens=2, system_prompt=None, n_boot=20, seed=3)
    assert refusal_study(tiny_model, {"v": vec}, reqs, [-1.0, 1.0], config=config) == by_keywords
    # options replace the config's fields
    assert refusal_study(tiny_model, {"v": vec}, reqs, [-1.0, 1.0], config=dataclasses_replace(config, seed=0),
                         seed=3) == by_keywords
    with pytest.raises(TypeError, match=r"refusal_study\(\) got unknown option\(s\) \['template'\]"):
        refusal_study(tiny_model, {"v": vec}, reqs, [-1.0, 1.0], template="persona")
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        refusal_study(tiny_model, {"v": vec}, reqs, [-1.0, 1.0], max_new_tokens=0)


def test_figure_and_table_come_from_the_saved_result(tiny_model, tmp_path):

    from workbench.core.io import atomic_write_json
    from workbench.viz.figures import figures_for
    from workbench.viz.report import report

    vec = SteeringVector(torch.randn(tiny_model.cfg.d_model), "blocks.0.hook_resid_post")
    result = refusal_study(tiny_model, {"v": vec}, load_refusal_requests("test")[:2], [-1.0, 1.0],
                           templates=(None, "persona"), max_new_tokens=2, n_boot=20)
    atomic_write_json(result, tmp_path / "refusal.json")
    loaded = json.loads((tmp_path / "refusal.json").read_text())
    figs = figures_for(loaded)
    assert list(figs) == ["rate"]
    ax = figs["rate"].axes
    assert len(ax) == 2 and len(ax[0].get_lines()) >= 2  # a line per (vector, template)
    with_cost = refusal_study(tiny_model, {"v": vec}, load_refusal_requests("test")[:2], [-1.0, 1.0],
                              templates=(None,), max_new_tokens=2, n_boot=20, neutral_texts=["A short text here."])
    assert len(figures_for(json.loads(json.dumps(with_cost)))["rate"].axes) == 3  # + the utility cost panel
    table = report(tmp_path)
    assert "refusal.json" in table and "persona" in table and "refusal_rate" in table


def test_refusal_command_rejects_an_unknown_template_before_loading_a_model(tmp_path, capsys):
    from workbench.cli.main import main

    code = main(["refusal", "--vector", str(tmp_path), "--templates", "none,nonsense", "--out", str(tmp_path / "r.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--templates: unknown ['nonsense']" in err and not (tmp_path / "r.json").exists()


def test_train_accepts_every_pair_format_by_name():
    """``workbench train --format`` takes each loader name (``advbench`` was once missing from its choices)."""
    from workbench.cli.main import build_parser
    from workbench.data.formats import PAIR_FORMATS

    train = next(a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                 if "--format" in a.option_strings)
    assert set(train.choices) == set(PAIR_FORMATS) | {"auto"}
