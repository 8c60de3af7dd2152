"""The truthfulness study on a tiny model and a TruthfulQA-format file written here."""

from __future__ import annotations

import json

import pytest

from workbench.core.results import Result
from workbench.engine.steering import remaining_hooks
from workbench.studies.config import TruthfulnessConfig
from workbench.studies.truthfulness import truthfulness_study, truthfulqa_split
from workbench.train.bipo import BiPOConfig


def _write_mc_task(path, n=8):
    items = [{"question": f"Is claim {i} true?", "mc1_targets": {f"Yes, {i}.": 1, f"No, {i}.": 0, "Maybe.": 0},
              "mc2_targets": {f"Yes, {i}.": 1, "It is.": 1, f"No, {i}.": 0, "Maybe.": 0}} for i in range(n)]
    path.write_text(json.dumps(items))
    return path


def test_split_holds_out_whole_questions(tmp_path):
    path = _write_mc_task(tmp_path / "mc_task.json")
    train, test, mc1, mc2 = truthfulqa_split(path, 0.5, 0, 2)
    assert len(mc1) == len(mc2) == 4 and len(train) == 8
    assert not {q.question for q in mc1} & {p.question for p in train}
    assert {p.question for p in test} == {q.question for q in mc1}


def test_study_returns_an_eval_result_labelled_truthfulness(tiny_model, tmp_path):
    path = _write_mc_task(tmp_path / "mc_task.json")
    res = truthfulness_study(tiny_model, path, tmp_path / "runs", BiPOConfig(layer=1, epochs=1, batch_size=4),
                             neutral_texts=["A short neutral passage about rivers and hills."],
                             multipliers=(-1.0, 0.0, 1.0), n_boot=20)
    assert isinstance(res, Result) and res.kind == "eval" and res["behavior"] == "truthfulness"
    assert {"mc1", "mc2", "logodds"} <= set(res.tables)
    mc1 = res.table("mc1")
    assert set(mc1["multiplier"]) == {-1.0, 0.0, 1.0} and mc1["mean"].between(0, 1).all()
    assert res["data"]["n_test_questions"] == 4 and res["data"]["n_train_pairs"] == 8
    assert remaining_hooks(tiny_model) == 0


def test_unknown_option_is_named(tiny_model, tmp_path):
    path = _write_mc_task(tmp_path / "mc_task.json")
    with pytest.raises(TypeError, match="n_pairs"):
        truthfulness_study(tiny_model, path, tmp_path / "runs", n_pairs=3)
    assert TruthfulnessConfig().test_fraction == 0.5
