"""The reproduction's stages (workbench.studies.stages): neutral passages, results labelled, each study
handed its own config derived from the StudyConfig."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from workbench.core.results import LOGIT_LENS_LAYERS, LOGIT_LENS_TOKENS, TRANSFER_LAYERS, result
from workbench.core.vector import SteeringVector
from workbench.data.behaviors import load_neutral_text
from workbench.data.refusal import load_refusal_requests
from workbench.studies import stages as S
from workbench.studies.config import StudyConfig

CONFIG = StudyConfig(behaviors=("power-seeking", "refusal"), layer=1, n_train=4, n_test=3, epochs=1,
                     warmup_steps=0, utility_texts=2, n_boot=20, refusal_templates=("none", "persona"))


def test_neutral_passages_follow_utility_texts_with_a_floor_and_a_cap():
    texts = load_neutral_text()
    assert S._neutral(CONFIG) == texts[:2]
    assert S._neutral(dataclasses.replace(CONFIG, utility_texts=0)) == []
    assert S._neutral(dataclasses.replace(CONFIG, utility_texts=0), at_least_one=True) == texts[:1]
    assert S._neutral(dataclasses.replace(CONFIG, utility_texts=None)) == texts
    assert S._neutral(dataclasses.replace(CONFIG, utility_texts=None), cap=3) == texts[:3]
    assert S._neutral(CONFIG, cap=1) == texts[:1]


def test_stages_label_the_analysis_results_and_keep_their_fields(monkeypatch):
    table = pd.DataFrame({"offset": [0, 2], "layer": [1, 3], "multiplier": [1.0, 1.0], "effect": [0.5, float("nan")]})
    monkeypatch.setattr(S, "layer_transfer", lambda *a, **k: result(TRANSFER_LAYERS, rows=table))
    out = S.transfer_stage("model", "power-seeking", "V", dataclasses.replace(CONFIG, finetune_steps=0))
    res = out["transfer_layers"]
    assert list(out) == ["transfer_layers"] and res.kind == TRANSFER_LAYERS
    assert list(res)[:4] == ["kind", "schema_version", "behavior", "method"] and res["method"] == "bipo"
    assert res["rows"][1]["effect"] is None and res.table().layer.tolist() == [1, 3]
    monkeypatch.setattr(S, "vector_logit_lens",
                        lambda *a, **k: result(LOGIT_LENS_TOKENS, rows=[{"vector": "v", "token": "a"}], k=1))
    monkeypatch.setattr(S, "steered_logit_lens", lambda *a, **k: result(LOGIT_LENS_LAYERS, rows=[{"layer": 0}]))
    lens = S.logit_lens_stage("model", "power-seeking", {"bipo": "V"}, CONFIG)
    tokens = lens["logit_lens_tokens_power-seeking"]
    assert tokens["k"] == 1 and tokens["behavior"] == "power-seeking"  # the analysis' own fields are kept
    layers = lens["logit_lens_layers_power-seeking_bipo"]
    assert list(layers)[2:6] == ["behavior", "vector", "multiplier", "title"] and layers["rows"] == [{"layer": 0}]


def test_cosine_stage_labels_every_method_and_behavior():
    g = torch.Generator().manual_seed(0)
    vectors = {b: {m: SteeringVector(torch.randn(8, generator=g), "blocks.1.hook_resid_post") for m in ("bipo", "caa")}
               for b in ("x", "y")}
    res = S.cosine_stage(vectors)
    assert res["kind"] == "cosine" and res["labels"] == ["bipo:x", "bipo:y", "caa:x", "caa:y"]
    assert [res["matrix"][i][i] for i in range(4)] == pytest.approx([1.0] * 4)
    assert res["matrix"][0][2] == pytest.approx(float(torch.nn.functional.cosine_similarity(
        vectors["x"]["bipo"].vector, vectors["x"]["caa"].vector, dim=0)), abs=1e-6)


def test_study_stages_hand_each_study_its_config(monkeypatch, tmp_path):
    seen = {}

    def capture(name):
        def fake(*args, **kw):
            seen[name] = (args, kw)
            return {"kind": name}
        return fake

    vecs = {"bipo": "B", "caa": "C", "pca": "P"}
    monkeypatch.setattr(S, "refusal_study", capture("refusal"))
    res = S.refusal_stage("model", vecs, CONFIG)
    args, kw = seen["refusal"]
    assert args == ("model", {"bipo": "B", "caa": "C"}, load_refusal_requests("test")[:3], CONFIG.multipliers)
    assert kw["config"] == CONFIG.refusal_config() and kw["config"].templates == (None, "persona")
    assert kw["neutral_texts"] == load_neutral_text()[:2] and res["data"] == {"behavior": "refusal", "split": "test"}

    monkeypatch.setattr(S, "truthfulness_study", capture("truthfulness"))
    assert S.truthfulness_stage("model", CONFIG, tmp_path) is None  # no TruthfulQA file: skipped
    S.truthfulness_stage("model", dataclasses.replace(CONFIG, truthfulqa="mc.json"), tmp_path, progress=True)
    args, kw = seen["truthfulness"]
    assert args == ("model", "mc.json", tmp_path / "truthfulness", CONFIG.bipo_config())
    assert kw["config"] == CONFIG.truthfulness_config() and kw["progress"]

    monkeypatch.setattr(S, "lora_transfer", capture("lora"))
    out = S.lora_transfer_stage("model", "power-seeking", vecs, CONFIG, tmp_path)
    args, kw = seen["lora"]
    assert args[1] == {"bipo": "B", "caa": "C"} and args[4] == tmp_path / "finetunes"
    assert args[2:4] == S.study_pairs("power-seeking", CONFIG)
    assert kw["config"] == CONFIG.lora_config() and out["behavior"] == "power-seeking"
