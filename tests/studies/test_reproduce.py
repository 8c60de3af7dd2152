"""The reproduction pipeline, end to end on the tiny model, and its command line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from workbench.studies import reproduce as R  # noqa: E402
from workbench.studies import vectors as V  # noqa: E402
from workbench.cli.main import main  # noqa: E402
from workbench.engine.steering import remaining_hooks  # noqa: E402
from workbench.core.vector import SteeringVector  # noqa: E402

TINY = R.StudyConfig(behaviors=("power-seeking", "wealth-seeking", "refusal"), layer=1, n_train=4, n_test=2,
                     epochs=1, warmup_steps=0, multipliers=(-1.0, 0.0, 1.0), sweep_layers="0,2", bipo_sweep_layers="2",
                     utility_texts=0, lens_k=3, transfer_offsets=(-1, 0, 1), finetune_steps=1, n_boot=20,
                     budgets=(0.05,), reps_epochs=1, refusal_templates=("none", "persona"), refusal_max_new_tokens=2,
                     lora_kl_targets=())  # the LoRA stage: tests/test_lora.py (it needs a Llama-style model)


def test_quick_config_is_small():
    q = R.StudyConfig.quick()
    assert q.n_train <= 8 and q.epochs == 1 and q.bipo_sweep_layers is None
    assert set(q.behaviors) >= set(q.composition)
    assert q.bipo_config().epochs == 1 and q.bipo_config().warmup_steps == 0
    assert R.StudyConfig().bipo_config(layer=9).layer == 9


def test_reproduce_tiny_writes_results_figures_and_reuses_work(tiny_model, tmp_path, monkeypatch):
    out, figs = tmp_path / "results", tmp_path / "figures"
    lines = []
    summary = R.reproduce(out, TINY, model=tiny_model, figures_dir=figs, log=lines.append)
    names = {p.name for p in out.glob("*.json")}
    behaviors = ("power-seeking", "wealth-seeking", "refusal")
    assert names == {"sweep_power-seeking.json", "cosine_methods_power-seeking.json", "cosine.json",
                     "logit_lens_tokens_power-seeking.json", "logit_lens_layers_power-seeking_bipo.json",
                     "logit_lens_layers_power-seeking_caa.json", "composition.json", "transfer_layers.json",
                     "transfer_model.json", "refusal.json", "summary.json",
                     *(f"eval_{b}.json" for b in behaviors), *(f"compare_{b}.json" for b in behaviors)}
    compare = json.loads((out / "compare_wealth-seeking.json").read_text())
    assert compare["kind"] == "matched_cost" and compare["behavior"] == "wealth-seeking"
    assert {r["vector"] for r in compare["rows"]} == {"bipo", "reps", "caa", "pca"} and compare["budgets"] == [0.05]
    for m in ("reps", "pca"):
        assert SteeringVector.load(out / "vectors" / "wealth-seeking" / "L01" / m).method == m
    refusal = json.loads((out / "refusal.json").read_text())
    assert refusal["templates"] == ["none", "persona"] and {r["vector"] for r in refusal["rows"]} == {"bipo", "caa"}
    assert refusal["n_requests"] == 2 and "kl" not in refusal["rows"][0]  # utility_texts=0: no utility cost
    sweep = json.loads((out / "sweep_power-seeking.json").read_text())
    assert {(r["method"], r["layer"]) for r in sweep["rows"]} == {("caa", 0), ("caa", 2), ("bipo", 2)}
    cosine = json.loads((out / "cosine.json").read_text())
    assert cosine["labels"] == [f"{m}:{b}" for m in ("bipo", "caa") for b in behaviors]
    ev = json.loads((out / "eval_power-seeking.json").read_text())
    assert {r["vector"] for r in ev["metrics"]["logodds"]} == {"bipo", "caa"}
    for m in ("bipo", "caa"):
        v = SteeringVector.load(out / "vectors" / "power-seeking" / "L01" / m)
        assert v.hook_name == "blocks.1.hook_resid_post" and v.metadata["behavior"] == "power-seeking"
    history = json.loads((out / "vectors" / "power-seeking" / "L01" / "bipo" / "history.json").read_text())
    assert history["kind"] == "bipo_history" and history["history"][0]["step"] == 1
    pngs = sorted(p.stem for p in figs.glob("*.png"))
    assert len(pngs) == len(list(figs.glob("*.pdf"))) == len(summary["figures"]) // 2
    for expected in ("eval_power-seeking__logodds", "sweep_power-seeking__layers", "cosine__heatmap",
                     "logit_lens_tokens_power-seeking__tokens", "composition__bars", "transfer_model__effect",
                     "vectors_power-seeking_L01_bipo_history__training"):
        assert expected in pngs
    assert summary["seconds"]["vectors:power-seeking"] > 0 and lines and remaining_hooks(tiny_model) == 0
    # the prompt layout every stage used, recorded once
    from workbench.core.prompts import prompt_format
    assert summary["prompt_format"] == prompt_format(tiny_model) and summary["prompt_format"]["example"]

    # a second run reuses the vectors and skips finished stages
    def no_training(*a, **k):
        raise AssertionError("retrained")

    monkeypatch.setattr(V, "train_bipo", no_training)
    monkeypatch.setattr(V, "train_reps", no_training)
    again = R.reproduce(out, TINY, model=tiny_model, figures_dir=figs, stages=("vectors", "eval", "compare"))
    assert again["results"] == [] and set(again["seconds"]) == {"load_model", *(f"vectors:{b}" for b in behaviors)}
    assert set(again["all_seconds"]) >= {"sweep", "compare:refusal", "refusal"}  # the first run's stages are kept
    # the opt-in stages: the reviewer's questions and the mechanism, reading the compare results on disk
    assert not set(R.OPT_IN_STAGES) & set(R.DEFAULT_STAGES) and set(R.DEFAULT_STAGES) | set(R.OPT_IN_STAGES) == set(R.STAGES)
    extra = R.reproduce(out, TINY, model=tiny_model, figures_dir=figs, stages=(*R.OPT_IN_STAGES, "figures"))
    written = {Path(p).stem for p in extra["results"]}
    assert {*(f"prompting_{b}" for b in behaviors), "entanglement", "conditional_power-seeking",
            "mechanism_power-seeking_bipo_attribution_patching", "mechanism_power-seeking_routes"} <= written
    prompting = json.loads((out / "prompting_wealth-seeking.json").read_text())
    methods = {r["method"] for r in prompting["rows"]}
    assert {"instruction", "kshot", "bipo", "instruction+bipo"} <= methods  # the compare result's vectors joined
    assert max(r["k"] for r in prompting["rows"]) <= TINY.n_train  # only the shots the training pairs allow
    ent = json.loads((out / "entanglement.json").read_text())
    assert {r["vector"] for r in ent["rows"]} == set(behaviors)
    on = [r for r in ent["rows"] if r["vector"] == r["target"]]
    assert on and all(r["normalized"] == pytest.approx(1.0) for r in on if r["on_target"])
    assert json.loads((out / "conditional_power-seeking.json").read_text())["kind"] == "conditional"
    routes = json.loads((out / "mechanism_power-seeking_routes.json").read_text())
    assert routes["kind"] == "mechanism_routes" and routes["labels"] == ["bipo", "caa"]
    assert "mechanism_power-seeking_routes__routes" in {p.stem for p in figs.glob("*.png")}
    assert remaining_hooks(tiny_model) == 0
    # other data (a different number of pairs) means new vectors
    with pytest.raises(AssertionError, match="retrained"):
        R.study_vectors(tiny_model, "power-seeking", dataclasses.replace(TINY, n_train=3), out / "vectors")


def test_reproduce_truthfulness_stage_holds_out_questions(tiny_model, tmp_path):
    items = [{"question": f"Is claim {i} true?", "mc1_targets": {f"Yes, {i}.": 1, f"No, {i}.": 0, "Maybe.": 0},
              "mc2_targets": {f"Yes, {i}.": 1, "It is.": 1, f"No, {i}.": 0, "Maybe.": 0}} for i in range(8)]
    path = tmp_path / "mc_task.json"
    path.write_text(json.dumps(items))
    config = dataclasses.replace(TINY, behaviors=("power-seeking",), truthfulqa=str(path), utility_texts=1)
    R.reproduce(tmp_path / "out", config, model=tiny_model, stages=("truthfulness",))
    res = json.loads((tmp_path / "out" / "truthfulness.json").read_text())
    assert res["kind"] == "eval" and res["behavior"] == "truthfulness"
    assert {"mc1", "mc2", "logodds", "kl_from_unsteered"} <= set(res["metrics"])
    assert res["data"]["n_test_questions"] == 2  # n_test caps the 4 held-out questions
    assert res["data"]["n_train_pairs"] == 8  # 4 training questions, 2 pairs each
    from workbench.studies.truthfulness import truthfulqa_split

    train, _, mc1, _ = truthfulqa_split(path, 0.5, 0, 2)
    assert len(mc1) == 4 and not {q.question for q in mc1} & {p.question for p in train}
    v = SteeringVector.load(tmp_path / "out" / "vectors" / "truthfulness" / "bipo")
    assert v.metadata["behavior"] == "truthfulness" and v.hook_name == "blocks.1.hook_resid_post"


def test_reproduce_rejects_bad_stage_behavior_and_options(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="unknown stage"):
        R.reproduce(tmp_path, TINY, model=tiny_model, stages=("train",))
    with pytest.raises(ValueError, match="unknown behavior"):
        R.reproduce(tmp_path, dataclasses.replace(TINY, behaviors=("flattery",)), model=tiny_model)
    with pytest.raises(TypeError, match=r"reproduce\(\) got unknown option\(s\) \['executors'\]"):
        R.reproduce(tmp_path, TINY, model=tiny_model, executors="inline")
    with pytest.raises(ValueError, match="executor='cloud'"):
        R.reproduce(tmp_path, TINY, model=tiny_model, executor="cloud")
    with pytest.raises(ValueError, match="must include the study's seed 0"):
        R.reproduce(tmp_path, TINY, model=tiny_model, seeds=(1, 2))
    assert not list(tmp_path.iterdir())  # rejected before anything was written


def test_cli_reproduce_passes_options(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake(out, config, **kw):
        seen.update(out=out, config=config, **kw)
        return {"results": ["a.json"], "figures": ["f.png", "f.pdf"]}

    monkeypatch.setattr(R, "reproduce", fake)
    code = main(["reproduce", "--quick", "--out", str(tmp_path / "r"), "--figures", str(tmp_path / "f"),
                 "--behaviors", "power-seeking", "wealth-seeking", "--stages", "vectors", "figures"])
    assert code == 0
    assert seen["config"] == dataclasses.replace(R.StudyConfig.quick(), behaviors=("power-seeking", "wealth-seeking"))
    assert seen["stages"] == ("vectors", "figures") and seen["figures_dir"] == str(tmp_path / "f")
    assert "1 result file(s)" in capsys.readouterr().out
    assert main(["reproduce", "--stages", "train"]) == 2
    assert "unknown stage" in capsys.readouterr().err
