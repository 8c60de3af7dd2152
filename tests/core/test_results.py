"""The result schema: every kind round-trips, committed results load, unknown kinds and newer versions fail."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from workbench.core import results as R

ROOT = Path(__file__).resolve().parents[2]

#: one minimal valid result per kind, built through the writer
EXAMPLES = {
    R.EVAL: dict(metrics={"logodds": pd.DataFrame({"vector": ["bipo"], "multiplier": [1.0], "mean": [0.5]})},
                 model="tiny", multipliers=[1.0], vectors=[]),
    R.SWEEP: dict(rows=pd.DataFrame({"layer": [0, 1], "effect@+1": [0.1, float("nan")]})),
    R.COSINE: dict(labels=["a", "b"], matrix=[[1.0, 0.5], [0.5, 1.0]]),
    R.COSINE_METHODS: dict(rows=[{"layer": 3, "cosine": 0.7}]),
    R.LOGIT_LENS_TOKENS: dict(rows=[{"direction": "promoted", "rank": 1, "token": " x", "logit_change": 2.0}]),
    R.LOGIT_LENS_LAYERS: dict(rows=[{"layer": 0, "delta_logodds": 0.0}]),
    R.COMPOSITION: dict(rows=[{"behavior": "p", "own_effect": 1.0}], conditions=[{"condition": "p", "effect": 1.0}],
                        multipliers={"p": 1.0}),
    R.TRANSFER_LAYERS: dict(rows=[{"offset": 0, "layer": 1, "multiplier": 1.0, "effect": 0.3}]),
    R.TRANSFER_MODEL: dict(rows=[{"multiplier": 1.0, "source_effect": 1.0, "target_effect": 0.5}]),
    R.TRANSFER_LORA: dict(rows=[{"finetune": "kl0.1", "kl": 0.11, "vector": "bipo", "direction": "+",
                                 "retained": 0.8}], finetunes=[{"target": 0.1, "reached": True, "kl_measured": 0.11}]),
    R.BIPO_HISTORY: dict(history=[{"step": 1, "loss": 0.69}], epochs=[]),
    R.REFUSAL: dict(rows=[{"vector": "v", "template": "none", "multiplier": 0.0, "refusal_rate": 0.5,
                           "logodds": 0.1}], generations=[]),
    R.MATCHED_COST: dict(rows=[], points=[], slopes=[], cost="kl", budgets=[0.1]),
    R.STUDY_SUMMARY: dict(results=[], figures=[]),
    R.ACTIVATION_PATCHING: dict(rows=[{"direction": "necessity", "component": "L1H0", "share": 0.4}],
                                pairs=[], totals=[], multiplier=1.0),
    R.ATTRIBUTION_PATCHING: dict(rows=[{"direction": "necessity", "component": "L1 mlp", "share": 0.2}],
                                 pairs=[], totals=[], multiplier=1.0),
    R.DIRECT_LOGIT_ATTRIBUTION: dict(rows=[{"component": "L1H0", "dla": 0.1}], layers=[], multiplier=1.0),
    R.ATTENTION_SHIFT: dict(rows=[{"layer": 1, "head": 0, "region": "prompt", "delta": 0.1}], heads=[],
                            multiplier=1.0),
    R.MECHANISM_ROUTES: dict(rows=[{"label": "bipo", "component": "L1H0", "share": 0.3}], cosines=[]),
    R.ENTANGLEMENT: dict(rows=[{"vector": "power", "target": "wealth", "multiplier": 1.0, "effect": 0.5,
                                "on_target": 2.0, "normalized": 0.25}], vectors=["power"], targets=["wealth"]),
    R.PROMPTING: dict(rows=[{"method": "instruction", "direction": 1, "k": 0, "cost": 0.1, "effect": 2.0}],
                      instructions={"elicit": "Ask.", "suppress": "Do not."}),
    R.CONDITIONAL: dict(rows=[{"vector": "bipo", "effect_ungated": 2.0, "effect_gated": 1.8, "kept": 0.9}],
                        grid=[{"layer": 3, "comparator": "above", "threshold": 0.1, "f1": 0.8}],
                        scores=[{"group": "power-seeking", "label": 1, "score": 0.2, "open": True}],
                        condition={"layer": 3, "threshold": 0.1, "comparator": "above"}),
}


def test_examples_cover_every_kind():
    assert set(EXAMPLES) == set(R.SCHEMAS)


@pytest.mark.parametrize("kind", sorted(R.SCHEMAS))
def test_each_kind_round_trips_through_json(kind):
    written = R.result(kind, **EXAMPLES[kind])
    assert written["kind"] == kind and written["schema_version"] == R.SCHEMA_VERSION
    back = R.from_dict(json.loads(json.dumps(written, allow_nan=False)))  # NaN was written as null
    assert back == written
    names = R.table_names(back)
    if kind == R.COSINE:
        assert R.result_table(back).loc["a", "b"] == 0.5
        assert R.rows(back)[1] == {"label": "b", "a": 0.5, "b": 1.0}
    elif kind == R.STUDY_SUMMARY:
        assert names == []
    else:
        main = EXAMPLES[kind].get("rows", EXAMPLES[kind].get("history"))
        if kind == R.EVAL:
            main = EXAMPLES[kind]["metrics"]["logodds"]
        expected = main if isinstance(main, list) else R.records(main)
        assert R.rows(back) == expected


def test_sweep_and_composition_objects_round_trip():
    from workbench.analysis.composition import CompositionResult
    from workbench.analysis.sweep import SweepResult

    sweep = SweepResult(pd.DataFrame({"layer": [2, 4], "effect@+1": [0.5, -0.25]}), {}, {"method": "caa"})
    again = SweepResult.from_dict(json.loads(json.dumps(sweep.to_dict())))
    pd.testing.assert_frame_equal(again.table(), sweep.table())
    assert again.info == {"method": "caa"} and again.records() == sweep.records()
    assert isinstance(sweep, R.Result) and isinstance(comp_like := again, SweepResult) and comp_like.vectors == {}
    comp = CompositionResult(pd.DataFrame({"behavior": ["p"], "own_effect": [1.0]}),
                             pd.DataFrame({"condition": ["p"], "behavior": ["p"], "effect": [1.0]}), {"p": 1.0})
    back = CompositionResult.from_dict(json.loads(json.dumps(comp.to_dict(method="bipo"))))
    pd.testing.assert_frame_equal(back.conditions, comp.conditions)
    assert back.multipliers == {"p": 1.0}
    with pytest.raises(R.ResultFormatError, match="expected a sweep result, got 'composition'"):
        SweepResult.from_dict(comp.to_dict())


def test_unknown_kind_and_newer_version_are_one_line_errors():
    with pytest.raises(R.ResultFormatError, match=r"^unknown result kind 'similarity'; known kinds: eval, sweep"):
        R.from_dict({"kind": "similarity", "schema_version": R.SCHEMA_VERSION})
    newer = R.result(R.SWEEP, rows=[{"layer": 0}]) | {"schema_version": R.SCHEMA_VERSION + 1}
    with pytest.raises(R.ResultFormatError, match=f"schema_version {R.SCHEMA_VERSION + 1} is newer") as info:
        R.from_dict(newer)
    assert "\n" not in str(info.value)
    with pytest.raises(R.ResultFormatError, match="lacks 'rows'"):
        R.from_dict({"kind": R.SWEEP, "schema_version": R.SCHEMA_VERSION})
    with pytest.raises(R.ResultFormatError, match="'rows' is not a list of row dicts"):
        R.from_dict({"kind": R.SWEEP, "schema_version": R.SCHEMA_VERSION, "rows": [1, 2]})
    with pytest.raises(R.ResultFormatError, match="needs a 'kind'"):
        R.from_dict({"schema_version": R.SCHEMA_VERSION, "rows": []})
    with pytest.raises(R.ResultFormatError, match="has no table 'points'"):
        R.rows(R.result(R.SWEEP, rows=[]), "points")


def test_version_1_is_migrated_explicitly():
    assert R.from_dict({"kind": "transfer", "rows": []})["kind"] == R.TRANSFER_MODEL
    old_history = R.from_dict({"history": [{"step": 1, "loss": 0.5}], "epochs": [], "setup_seconds": 1.0})
    assert old_history["kind"] == R.BIPO_HISTORY and old_history["schema_version"] == R.SCHEMA_VERSION
    assert R.from_dict([{"step": 1, "loss": 0.5}])["history"] == [{"step": 1, "loss": 0.5}]
    # a current-version file is read as written: "transfer" is no longer a kind
    with pytest.raises(R.ResultFormatError, match="unknown result kind 'transfer'"):
        R.from_dict({"kind": "transfer", "schema_version": R.SCHEMA_VERSION, "rows": []})


def test_version_2_logit_lens_kl_is_named_for_its_direction():
    old = {"kind": R.LOGIT_LENS_LAYERS, "schema_version": 2, "behavior": "p",
           "rows": [{"layer": 0, "delta_logodds": 0.0, "kl": 0.0}, {"layer": 1, "delta_logodds": 0.2, "kl": 0.03}]}
    new = R.from_dict(old)
    assert new["schema_version"] == 3 == R.SCHEMA_VERSION and new["behavior"] == "p"
    assert [r["kl_steered_unsteered"] for r in new["rows"]] == [0.0, 0.03]
    assert all("kl" not in r for r in new["rows"]) and list(new["rows"][1]) == ["layer", "delta_logodds",
                                                                              "kl_steered_unsteered"]
    assert old["rows"][1]["kl"] == 0.03  # the input is not changed
    # other kinds keep their columns (the utility cost's kl is KL(unsteered || steered), named as before)
    refusal = R.from_dict({"kind": R.REFUSAL, "schema_version": 2, "rows": [{"kl": 0.1}], "generations": []})
    assert refusal["rows"] == [{"kl": 0.1}]
    composition = R.from_dict({"kind": R.COMPOSITION, "schema_version": 2, "multipliers": {}, "rows": [],
                               "conditions": [{"condition": "p", "effect": 1.0, "effect_sem": 0.1}]})
    assert composition["conditions"][0]["effect_sem"] == 0.1  # a standard error stays what it is
    # version 1 goes through both steps
    v1 = R.from_dict({"kind": R.LOGIT_LENS_LAYERS, "rows": [{"layer": 0, "kl": 0.5}]})
    assert v1["rows"] == [{"layer": 0, "kl_steered_unsteered": 0.5}] and v1["schema_version"] == 3


def test_result_info_with_info_and_records():
    res = R.result(R.TRANSFER_LAYERS, method="bipo", rows=[{"offset": 0, "effect": 0.5}])
    assert res.info == {"method": "bipo"} and res.tables == ["rows"]
    more = res.with_info(behavior="p")
    assert list(more) == ["kind", "schema_version", "behavior", "method", "rows"] and list(res) != list(more)
    assert R.records(more) == [{"offset": 0, "effect": 0.5}]  # a result's main table
    assert type(more) is R.Result and more.kind == R.TRANSFER_LAYERS


def _committed() -> list[Path]:
    """The result files git tracks under results/ (a full run also writes fine-tuned model directories and
    caches there, which are not results); every file there without git."""
    import subprocess

    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", "results"], cwd=ROOT, capture_output=True,
                                check=True).stdout.decode().split("\0")
        files = [ROOT / f for f in listed if f.endswith(".json")]
    except (OSError, subprocess.CalledProcessError):
        files = list((ROOT / "results").rglob("*.json"))
    return sorted(p for p in files if p.name not in ("vector.json", "study_key.json", "extra_key.json",
                                                     "finetunes.json", "condition.json"))


def test_every_committed_result_loads_through_the_schema():
    paths = _committed()
    assert len(paths) >= 20
    kinds = set()
    for path in paths:
        res = R.load_result(path)
        kinds.add(res["kind"])
        for name in R.table_names(res):
            assert isinstance(R.result_table(res, name), pd.DataFrame)
    assert {R.EVAL, R.SWEEP, R.COSINE, R.TRANSFER_MODEL, R.BIPO_HISTORY, R.REFUSAL} <= kinds


def test_load_result_names_the_file(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"kind": "nope"}))
    with pytest.raises(R.ResultFormatError, match=r"r\.json: unknown result kind 'nope'"):
        R.load_result(bad)
