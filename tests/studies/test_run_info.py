"""The run information every written result carries (``workbench.studies.runs.write_result``): the model and
the prompt format (``workbench.core.prompts.prompt_format``), through the command line, and in a trained
vector's metadata."""

import json

import pytest
import torch

import workbench.core.loading
from workbench.cli.main import main
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT, prompt_format
from workbench.core.results import TRANSFER_LAYERS, Result, result
from workbench.core.vector import SteeringVector
from workbench.data.formats import save_pairs_jsonl
from workbench.data.pairs import PreferencePair
from workbench.studies.run_evaluate import CompareRun, compare_run
from workbench.studies.run_train import TrainRun, train_run
from workbench.studies.runs import with_run_info, write_result

PAIRS = [PreferencePair(f"Question {i}?", "Yes" + "!" * i, "No") for i in range(4)]


@pytest.fixture
def tiny(monkeypatch, tiny_model):
    monkeypatch.setattr(workbench.core.loading, "load_model", lambda *a, **k: tiny_model)
    return tiny_model


def test_with_run_info_adds_the_prompt_format_and_keeps_the_result_type(tiny_model, tmp_path):
    res = result(TRANSFER_LAYERS, rows=[{"offset": 0, "layer": 1, "multiplier": 1.0, "effect": 0.5}])
    out = with_run_info(res, tiny_model, None)
    assert isinstance(out, Result) and "prompt_format" not in res  # a copy
    assert list(out)[:4] == ["kind", "schema_version", "model", "prompt_format"]
    assert out["model"] == "tiny-3x32" and out["prompt_format"] == prompt_format(tiny_model, None)
    plain = {"kind": "matched_cost", "model": "given", "rows": []}
    assert with_run_info(plain, tiny_model) == {**plain, "prompt_format": prompt_format(tiny_model)}
    written = write_result(res, tmp_path / "r.json", tiny_model)
    assert json.loads((tmp_path / "r.json").read_text()) == written


@pytest.mark.parametrize("flags, system_prompt", [([], DEFAULT_SYSTEM_PROMPT), (["--no-system-prompt"], None),
                                                  (["--system-prompt", "Be brief."], "Be brief.")])
def test_eval_command_writes_the_prompt_format(tiny, tmp_path, flags, system_prompt):
    data = save_pairs_jsonl(PAIRS, tmp_path / "p.jsonl")
    SteeringVector(torch.randn(32), "blocks.1.hook_resid_post", method="caa", model_name="tiny-3x32").save(
        tmp_path / "caa")
    out = tmp_path / "r.json"
    assert main(["eval", "--vector", str(tmp_path / "caa"), "--data", str(data), "--format", "jsonl", "--metrics",
                 "logodds", "--multipliers", "-1", "1", "--n-boot", "10", "--out", str(out), *flags]) == 0
    saved = json.loads(out.read_text())
    assert saved["prompt_format"] == prompt_format(tiny, system_prompt)
    assert (saved["prompt_format"]["format"], saved["prompt_format"]["system_prompt"]) == ("chat_template", system_prompt)
    assert saved["model"] == "tiny-3x32"


def test_compare_records_it_on_a_plain_result(tiny, tmp_path, monkeypatch):
    import workbench.studies.run_evaluate as run_evaluate

    monkeypatch.setattr(run_evaluate, "matched_cost", lambda *a, **k: {"kind": "matched_cost", "rows": []})
    SteeringVector(torch.randn(32), "blocks.1.hook_resid_post", method="caa", model_name="tiny-3x32").save(
        tmp_path / "v")
    res = compare_run(CompareRun(vector=[str(tmp_path / "v")], data=str(save_pairs_jsonl(PAIRS, tmp_path / "p.jsonl")),
                                 format="jsonl", budgets=[0.1], out=str(tmp_path / "c.json")))
    assert json.loads((tmp_path / "c.json").read_text()) == res
    assert res["prompt_format"] == prompt_format(tiny) and res["model"] == "tiny-3x32"


def test_train_records_the_prompt_format_in_the_vector(tiny, tmp_path):
    vector, _ = train_run(TrainRun(method="caa", behavior="power-seeking", limit=4, layer=1, no_system_prompt=True,
                                   out=str(tmp_path / "v")))
    assert vector.metadata["prompt_format"] == prompt_format(tiny, None)
    assert SteeringVector.load(tmp_path / "v").metadata["prompt_format"] == prompt_format(tiny, None)
