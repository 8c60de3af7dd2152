"""The runs behind the commands (``workbench.studies.runs`` and ``run_train``, ``run_evaluate``, ``run_studies``,
``run_files``): checks before the model loads, the engine's answer-length rule, and runs that give exactly
what the library functions they call give."""

import json
from pathlib import Path

import pytest
import torch

import workbench.core.loading
from workbench.core.prompts import end_of_turn
from workbench.core.vector import SteeringVector
from workbench.data.formats import save_pairs_jsonl
from workbench.data.pairs import PreferencePair
from workbench.evaluate.suite import evaluate_vectors
from workbench.studies.run_evaluate import CompareRun, EvalRun, RefusalRun, compare_run, evaluate_run, refusal_run
from workbench.studies.run_files import figures_run, report_run
from workbench.studies.run_studies import DemoRun, ReproduceRun, SweepRun, demo_run, reproduce_run, sweep_run
from workbench.studies.run_train import TrainRun, check_answer_lengths, train_run, warn_long_answers
from workbench.studies.runs import (DataOptions, ModelOptions, RunError, check_data, check_out, check_run_multipliers,
                                    neutral_texts, vector_labels)
from workbench.train.baselines import caa

PAIRS = [PreferencePair(f"Question {i}?", "Yes" + "!" * i, "No", source=f"p.jsonl:{i + 2}") for i in range(4)]


@pytest.fixture
def no_model(monkeypatch):
    monkeypatch.setattr(workbench.core.loading, "load_model", lambda *a, **k: pytest.fail("model loaded"))


@pytest.fixture
def tiny(monkeypatch, tiny_model):
    monkeypatch.setattr(workbench.core.loading, "load_model", lambda *a, **k: tiny_model)
    return tiny_model


def test_run_error_is_a_value_error():
    assert issubclass(RunError, ValueError)


def test_path_checks(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunError, match=r"--out .*/f: is a file; give a directory path$"):
        check_out("--out", tmp_path / "f", kind="dir")
    with pytest.raises(RunError, match="is a directory; give a file path"):
        check_out("--out", tmp_path, kind="file")
    with pytest.raises(RunError, match=r"/f is not a directory$"):
        check_out("--out", tmp_path / "f" / "x", kind="file")
    check_out("--out", tmp_path / "new" / "deeper", kind="dir")  # a missing path under a writable one is fine
    with pytest.raises(RunError, match="no such file"):
        check_data(tmp_path / "missing.csv")
    with pytest.raises(RunError, match="is a directory; give a data file"):
        check_data(tmp_path)


def test_out_symlinks_are_followed_and_dangling_ones_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "to_dir").symlink_to(tmp_path / "real")
    assert check_out("--out", tmp_path / "to_dir", kind="dir") == str(tmp_path / "real")
    (tmp_path / "r.json").write_text("{}")
    (tmp_path / "to_file").symlink_to(tmp_path / "r.json")
    assert check_out("--out", tmp_path / "to_file", kind="file") == str(tmp_path / "r.json")
    with pytest.raises(RunError, match="is a directory; give a file path"):  # the target is checked
        check_out("--out", tmp_path / "to_dir", kind="file")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(RunError, match=r"^--out .*/dangling: is a symbolic link to .*/gone, which does not exist; "
                                       "remove the link or give another path$"):
        check_out("--out", tmp_path / "dangling", kind="dir")
    assert check_out("--out", tmp_path / "new.json", kind="file") == str(tmp_path / "new.json")
    assert check_out("--out", None, kind="file") is None


def test_train_through_a_dangling_link_is_refused_before_the_model(no_model, tmp_path):
    (tmp_path / "o").symlink_to(tmp_path / "gone")
    with pytest.raises(RunError, match="symbolic link"):
        train_run(TrainRun(method="caa", behavior="power-seeking", out=str(tmp_path / "o")))
    assert not (tmp_path / "gone").exists()


def test_device_counts_refused_before_the_model(no_model):
    with pytest.raises(RunError, match=r"^--n-devices 0: must be a whole number >= 1$"):
        ModelOptions(n_devices=0).load_model()
    with pytest.raises(RunError, match=r"^--n-devices 2: splitting the blocks needs --device cuda, got cpu$"):
        ModelOptions(n_devices=2).check_model()
    if not torch.cuda.is_available():
        with pytest.raises(RunError, match=r"^--device: device 'cuda'.*not available"):
            ModelOptions(device="cuda").check_model()
    else:
        n = torch.cuda.device_count()
        with pytest.raises(RunError, match=rf"this machine has {n} CUDA device\(s\)"):
            ModelOptions(device="cuda", n_devices=n + 1).check_model()
    assert ModelOptions().check_model() == "cpu"


def test_run_multipliers_given_twice_name_the_flag():
    assert check_run_multipliers([-1.0, 1.0]) == [-1.0, 1.0]
    with pytest.raises(RunError, match=r"^--multipliers\[0\] = 1.0 and --multipliers\[1\] = 1.0 are the same "
                                       r"multiplier 1; give each multiplier once$"):
        check_run_multipliers([1.0, 1.0])
    with pytest.raises(RunError, match=r"are the same multiplier 0;"):
        check_run_multipliers([-0.0, 0.0])


def test_source_options_an_embedded_set_would_ignore():
    with pytest.raises(RunError, match=r"^--test-fraction applies to --data only; the train/test split of --behavior "
                                       r"power-seeking is fixed \(choose a part with --split\)$"):
        DataOptions(behavior="power-seeking", test_fraction=0.3).check_source()
    with pytest.raises(RunError, match=r"^--pairs-per-question applies to --data only; the train/test split of the embedded requests"):
        DataOptions(pairs_per_question=2).check_source(embedded="the embedded requests")
    DataOptions(test_fraction=0.3).check_source()  # eval: the TruthfulQA questions' split, without pairs
    DataOptions(data="x.csv", test_fraction=0.3).check_source()


def test_data_options():
    assert DataOptions(allow_empty_question=True).loader_options() == {"allow_empty_question": True}
    assert DataOptions(format="truthfulqa-mc1", pairs_per_question=2).loader_options() == {"per_question": 2}
    with pytest.raises(RunError, match="--pairs-per-question needs --format truthfulqa-mc1"):
        DataOptions(format="jsonl", pairs_per_question=2).loader_options()
    with pytest.raises(RunError, match="--test-fraction 1.5: must be between 0 and 1"):
        DataOptions(test_fraction=1.5).check_test_fraction()
    pairs, info = DataOptions(behavior="power-seeking", split="test").pairs("train")
    assert info == {"behavior": "power-seeking", "split": "test"} and pairs


def test_data_part_splits_like_train_test_split(tmp_path):
    from workbench.data.pairs import train_test_split

    path = save_pairs_jsonl(PAIRS * 3, tmp_path / "p.jsonl")
    options = DataOptions(data=str(path), format="jsonl", test_fraction=0.25, split_seed=3)
    train, info = options.data_part("train")
    test, _ = options.data_part("test")
    expected = train_test_split(PAIRS * 3, 0.25, 3)
    assert [p.matching for p in train] == [p.matching for p in expected[0]]
    assert [p.matching for p in test] == [p.matching for p in expected[1]]
    assert info["part"] == "train" and info["test_fraction"] == 0.25


def test_layer_and_hook_refused_before_the_model(no_model):
    with pytest.raises(RunError, match=r"^--hook bogus: "):
        ModelOptions().check_layer_hook(3, "bogus")
    with pytest.raises(RunError, match=r"^--layer 30: model SmolLM2-135M-Instruct has layers 0\.\.29$"):
        ModelOptions().check_layer_hook(30, "resid_post")
    ModelOptions(model="some/other").check_layer_hook(99, "resid_post")  # unknown size: checked after loading


def test_vector_labels():
    v = SteeringVector(torch.ones(4), "blocks.0.hook_resid_post", method="caa")
    w = SteeringVector(torch.ones(4), "blocks.0.hook_resid_post", method="bipo")
    assert vector_labels([(v, "a/x"), (w, "b/y")]) == ["caa", "bipo"]
    assert vector_labels([(v, "a/x"), (v, "b/y"), (v, "c/y")]) == ["caa:x", "caa:y", "caa:y#2"]


def test_neutral_texts(tmp_path):
    (tmp_path / "n.txt").write_text("one\n\n  two  \nthree\n")
    assert neutral_texts(tmp_path / "n.txt", 2) == ["one", "two"]
    assert neutral_texts(None, 1) and len(neutral_texts(None, None)) > 1  # the embedded text
    (tmp_path / "e.txt").write_text("\n \n")
    with pytest.raises(RunError, match=r"^--neutral .*e\.txt:1: file is empty$"):
        neutral_texts(tmp_path / "e.txt", None)
    with pytest.raises(RunError, match="--neutral .*: no such file"):
        neutral_texts(tmp_path / "missing.txt", None)


def test_answer_length_rule_is_the_trainers(tiny_model):
    """Refused exactly when the answer (closed by the end-of-turn string) has max_length tokens or more."""
    eot = end_of_turn(tiny_model)
    for max_length in range(2, 9):
        n_tokens = [len(tiny_model.tokenizer(p.matching + eot, add_special_tokens=False)["input_ids"])
                    for p in PAIRS]
        first_bad = next((i for i, n in enumerate(n_tokens) if n >= max_length), None)
        if first_bad is None:
            check_answer_lengths(tiny_model, PAIRS, max_length, None, "p.jsonl")
            continue
        with pytest.raises(RunError) as info:
            check_answer_lengths(tiny_model, PAIRS, max_length, None, "p.jsonl")
        assert str(info.value) == (f"p.jsonl:{first_bad + 2}: the matching answer has {n_tokens[first_bad]} "
                                   f"tokens, too many for --max-length {max_length} (answers are never cut); "
                                   "raise --max-length")


def test_long_answers_warn():
    lines = []
    warn_long_answers([PAIRS[0], PreferencePair("q", "a" * 3000, "b")], "data.csv", lines.append)
    assert lines == ["warning: 1 pair(s) have an answer over 2048 characters (first: pair 2 of data.csv, 3000 "
                     "characters); this will be slow"]


def test_train_checks_before_the_model(no_model, tmp_path):
    with pytest.raises(RunError, match="--method actadd needs --positive TEXT and --negative TEXT"):
        train_run(TrainRun(method="actadd", out=str(tmp_path / "o")))
    with pytest.raises(RunError, match="--beta and --direction apply to --method bipo only"):
        train_run(TrainRun(method="reps", behavior="power-seeking", beta=0.5, out=str(tmp_path / "o")))
    with pytest.raises(RunError, match=r"BiPOConfig\.lr=-1.0 is out of range \(--lr\)"):
        train_run(TrainRun(behavior="power-seeking", lr=-1.0, out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_train_caa_is_the_library_caa(tiny, tmp_path):
    lines = []
    vector, history = train_run(TrainRun(method="caa", behavior="power-seeking", limit=4, layer=1,
                                         out=str(tmp_path / "v")), log=lines.append)
    from workbench.data.behaviors import load_behavior

    expected = caa(tiny, load_behavior("power-seeking", "train")[:4], 1)
    assert history is None and torch.equal(vector.vector, expected.vector)
    assert torch.equal(SteeringVector.load(tmp_path / "v").vector, expected.vector)
    assert vector.metadata["data"] == {"behavior": "power-seeking", "split": "train"}
    assert lines[-1].startswith(f"wrote {tmp_path / 'v'}: ")


def test_eval_is_the_library_evaluation(tiny, tmp_path):
    path = save_pairs_jsonl(PAIRS, tmp_path / "p.jsonl")
    v = SteeringVector(torch.randn(32), "blocks.1.hook_resid_post", method="caa", model_name="tiny-3x32")
    v.save(tmp_path / "caa")
    result = evaluate_run(EvalRun(vector=[str(tmp_path / "caa")], data=str(path), format="jsonl", metrics=["logodds"],
                                  multipliers=[-1.0, 1.0], n_boot=10, out=str(tmp_path / "r.json")))
    direct = evaluate_vectors(tiny, {"caa": v}, PAIRS, multipliers=[-1.0, 1.0], metrics=["logodds"], n_boot=10,
                              progress=False)
    assert result["metrics"]["logodds"] == direct["metrics"]["logodds"]
    assert Path(tmp_path / "r.json").is_file()


@pytest.mark.parametrize("all_points", [False, True])
def test_compare_shows_progress_and_passes_all_points(tiny, tmp_path, monkeypatch, all_points):
    """compare draws matched_cost's progress bar; --all-points reaches matched_cost."""
    import workbench.studies.run_evaluate as run_evaluate

    seen = {}

    def fake(model, vectors, pairs, texts, **kw):
        seen.update(kw)
        return {"kind": "matched_cost", "rows": []}

    monkeypatch.setattr(run_evaluate, "matched_cost", fake)
    path = save_pairs_jsonl(PAIRS, tmp_path / "p.jsonl")
    v = SteeringVector(torch.randn(32), "blocks.1.hook_resid_post", method="caa", model_name="tiny-3x32")
    v.save(tmp_path / "v")
    compare_run(CompareRun(vector=[str(tmp_path / "v")], data=str(path), format="jsonl", budgets=[0.1],
                           all_points=all_points, out=str(tmp_path / "c.json")))
    assert seen["progress"] is True and seen["all_points"] is all_points
    assert "effect_grid" not in seen  # matched_cost's default grid
    seen.clear()
    compare_run(CompareRun(vector=[str(tmp_path / "v")], data=str(path), format="jsonl", budgets=[0.1],
                           effect_grid=[] if all_points else [0.25, 0.5], out=str(tmp_path / "c.json")))
    assert seen["effect_grid"] == (() if all_points else (0.25, 0.5))


def test_compare_with_prompting_adds_the_prompting_points(tiny, tmp_path):
    """--prompting: the behavior's instruction and k shots (as many as its training pairs allow) beside the
    vectors, in the same result and figure; refused before any model loads where it cannot run."""
    v = SteeringVector(torch.randn(32), "blocks.1.hook_resid_post", method="caa", model_name="tiny-3x32")
    v.save(tmp_path / "v")
    res = compare_run(CompareRun(vector=[str(tmp_path / "v")], behavior="power-seeking", limit=2, budgets=[0.1],
                                 texts=2, text_tokens=8, n_boot=10, prompting=True, out=str(tmp_path / "c.json")))
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["kind"] == "matched_cost" and saved["prompting"]["behavior"] == "power-seeking"
    labels = {p["vector"] for p in saved["points"]}
    assert {"caa", "prompt: instruction", "prompt: k-shot"} <= labels
    ks = {r["k"] for r in saved["prompting_rows"] if r["method"] == "kshot"}
    assert ks == {1, 2, 4, 8}  # 80 training pairs
    assert res["sources"] == saved["sources"]
    from workbench.studies.run_evaluate import format_compare

    printed = format_compare(res)  # the command's table, and the prompting rows under it
    assert "Asking instead of steering" in printed and "instruction+caa" in printed and "kshot" in printed
    assert "Asking instead of steering" not in format_compare({k: v for k, v in saved.items() if k != "prompting_rows"})
    for kw, message in (({"cost": "perplexity"}, "--prompting compares with the KL cost"),
                        ({"data": str(save_pairs_jsonl(PAIRS, tmp_path / "p.jsonl")), "format": "jsonl",
                          "behavior": None}, "--prompting with --data needs --test-fraction")):
        cfg = dict(vector=[str(tmp_path / "v")], behavior="power-seeking", budgets=[0.1], prompting=True,
                   out=str(tmp_path / "d.json")) | kw
        with pytest.raises(RunError, match=message):
            compare_run(CompareRun(**cfg))


@pytest.mark.parametrize("config, message", [
    (EvalRun(vector=["v"], metrics=["nope"], out="r.json"), "--metrics: unknown ['nope']"),
    (EvalRun(vector=["v"], metrics=["logodds"], out="r.json"), "need preference pairs"),
    (EvalRun(vector=["v"], behavior="power-seeking", n_boot=-1, out="r.json"), "--n-boot must be >= 1, got -1"),
    (EvalRun(vector=["v"], behavior="power-seeking", n_boot=0, out="r.json"), "--n-boot must be >= 1, got 0"),
    (EvalRun(vector=["v"], behavior="power-seeking", multipliers=[-0.0, 1.0, 0.0], out="r.json"),
     "--multipliers[0] = -0.0 and --multipliers[2] = 0.0 are the same multiplier 0"),
    (EvalRun(vector=["v"], behavior="power-seeking", test_fraction=0.5, out="r.json"),
     "--test-fraction applies to --data only"),
    (EvalRun(vector=["v"], behavior="power-seeking", n_devices=0, out="r.json"), "--n-devices 0"),
    (CompareRun(vector=["v"], behavior="power-seeking", n_boot=0, out="c.json"), "--n-boot must be >= 1, got 0"),
    (CompareRun(vector=["v"], behavior="power-seeking", test_fraction=0.5, out="c.json"), "--test-fraction"),
    (RefusalRun(vector=["v"], templates="none", n_boot=0, out="r.json"), "--n-boot must be >= 1, got 0"),
    (RefusalRun(vector=["v"], templates="none", multipliers=[2.0, 2.0], out="r.json"), "the same multiplier 2"),
    (RefusalRun(vector=["v"], templates="none", test_fraction=0.5, out="r.json"),
     "--test-fraction applies to --data only; the train/test split of the embedded refusal requests is fixed"),
    (SweepRun(behavior="power-seeking", multipliers=[1.0, 1.0], out="s.json"), "the same multiplier 1"),
    (SweepRun(behavior="power-seeking", test_fraction=0.3, out="s.json"), "--test-fraction applies to --data only"),
    (SweepRun(behavior="power-seeking", n_devices=2, out="s.json"), "--n-devices 2"),
    (DemoRun(multipliers=[0.0, -0.0]), "the same multiplier 0"),
    (ReproduceRun(n_devices=0), "--n-devices 0"),
    (TrainRun(behavior="power-seeking", test_fraction=0.3, out="o"), "--test-fraction applies to --data only"),
    (TrainRun(behavior="power-seeking", n_devices=3, out="o"), "--n-devices 3"),
    (CompareRun(vector=["v"], behavior="power-seeking", cost="entropy", out="c.json"), "--cost"),
    (CompareRun(vector=["v"], behavior="power-seeking", texts=0, out="c.json"), "--texts must be >= 1, got 0"),
    (RefusalRun(vector=["v"], templates="none,nonsense", out="r.json"), "--templates: unknown ['nonsense']"),
    (SweepRun(behavior="power-seeking", epochs=2, out="s.json"), "--epochs and --lr apply to --method bipo"),
    (DemoRun(behavior="nope"), "choose one of"),
    (ReproduceRun(stages=["train"]), "--stages: unknown stage(s) ['train']"),
])
def test_runs_refuse_bad_options_before_the_model(no_model, config, message):
    run = {EvalRun: evaluate_run, CompareRun: compare_run, RefusalRun: refusal_run, SweepRun: sweep_run,
           DemoRun: demo_run, ReproduceRun: reproduce_run, TrainRun: train_run}[type(config)]
    with pytest.raises(RunError) as info:
        run(config)
    assert message in str(info.value)


def test_figures_and_report_need_results(tmp_path):
    with pytest.raises(RunError, match="no such directory"):
        figures_run(str(tmp_path / "missing"))
    with pytest.raises(RunError, match="no result JSON with a known \"kind\""):
        figures_run(str(tmp_path), str(tmp_path / "f"))
    with pytest.raises(RunError, match=r"--kind: unknown \['nope'\]"):
        report_run(str(tmp_path), kind=["nope"])
    with pytest.raises(RunError, match=r"no result JSON found$"):
        report_run(str(tmp_path))


def _matched_cost_pair(root: Path) -> None:
    """The study's matched-cost result, a copy whose rows lack their budget (issue #30's case) and whose points are
    gone, and a file that is not JSON."""
    import json

    good = json.loads((Path(__file__).resolve().parents[2] / "results" / "full" / "compare_sycophancy.json").read_text())
    root.mkdir(exist_ok=True)
    (root / "good.json").write_text(json.dumps(good))
    (root / "bad.json").write_text(json.dumps({**good, "points": [], "rows": [
        {k: v for k, v in r.items() if k != "budget"} for r in good["rows"]]}))
    (root / "broken.json").write_text("{")


def test_report_and_figures_skip_the_same_results_and_say_so(tmp_path):
    results = tmp_path / "results"
    _matched_cost_pair(results)
    lines = []
    text, skipped = report_run(str(results), log=lines.append)
    assert "### good.json" in text and "bad.json" not in text
    assert [p.name for p, _ in skipped] == ["bad.json", "broken.json"]
    assert skipped[0][1] == "cannot tabulate (KeyError: 'budget')" and skipped[1][1].startswith("not valid JSON")
    assert lines == [f"warning: {p}: {why}; skipped" for p, why in skipped]
    lines = []
    written, fig_skipped = figures_run(str(results), str(tmp_path / "f"), ["png"], log=lines.append)
    assert [p.name for p in written] == ["good__cost_effect.png"]
    assert [p.name for p, _ in fig_skipped] == ["bad.json", "broken.json"]
    assert fig_skipped[0][1].startswith("cannot draw (") and fig_skipped[1] == skipped[1]
    assert lines == [f"warning: {p}: {why}; skipped" for p, why in fig_skipped]
    (results / "good.json").unlink()  # nothing readable: an error naming the file, for both
    with pytest.raises(RunError, match=r"no result could be read: .*bad\.json: cannot tabulate \(KeyError: 'budget'\) "
                                       r"\(and 1 more skipped\)$"):
        report_run(str(results))
    with pytest.raises(RunError, match=r"no result could be read: .*bad\.json: cannot draw"):
        figures_run(str(results), str(tmp_path / "f2"), ["png"])
    assert not (tmp_path / "f2").exists()
