"""evaluate_vectors, format_eval and the ``workbench eval`` command."""

from __future__ import annotations

import json

import pytest
import torch

import workbench.core.loading
from workbench.core.results import SCHEMA_VERSION
from workbench.cli.main import main
from workbench.data.pairs import MCQuestion, PreferencePair
from workbench.data.formats import save_pairs_jsonl
from workbench.evaluate.suite import METRICS, EvalConfig, evaluate_vectors, format_eval
from workbench.engine.steering import remaining_hooks
from workbench.core.vector import IncompatibleVectorError, SteeringVector

MULTS = [-1.0, 0.0, 1.0]


def _vec(seed, method, hook="blocks.1.hook_resid_post", d=32, model_name="tiny-3x32"):
    return SteeringVector(torch.randn(d, generator=torch.Generator().manual_seed(seed)), hook, method=method,
                          model_name=model_name)


@pytest.fixture
def pairs():
    return [PreferencePair(f"Would you like control number {i}?", f"Yes {'x' * i}", f"No {'y' * (3 - i % 3)}")
            for i in range(4)]


@pytest.fixture
def ab_pairs():
    return [PreferencePair(f"Pick {i}\n (A) yes\n (B) no", "(A)" if i % 2 else "(B)", "(B)" if i % 2 else "(A)")
            for i in range(4)]


def test_evaluate_vectors_schema_and_purity(tiny_model, pairs):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    vecs = {"bipo": _vec(1, "bipo"), "caa": _vec(2, "caa", "blocks.0.hook_mlp_out")}
    r = evaluate_vectors(tiny_model, vecs, pairs, multipliers=MULTS, metrics=["logodds", "ab", "utility", "truthfulqa"],
                         neutral_texts=["Plain words here.", "More plain words."], n_boot=50, progress=False,
                         truthfulqa=([MCQuestion("Q?", ("a", "b"), (1, 0))], None))
    assert remaining_hooks(tiny_model) == 0
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    assert r["kind"] == "eval" and r["schema_version"] == SCHEMA_VERSION and r["model"] == "tiny-3x32"
    assert [v["label"] for v in r["vectors"]] == ["bipo", "caa"]
    assert r["vectors"][1]["hook_name"] == "blocks.0.hook_mlp_out"
    assert set(r["metrics"]) == {"logodds", "logodds_per_token", "steerability", "steerability_pairs", "perplexity",
                                 "top1_agreement", "kl_from_unsteered", "mc1"}
    per_pair = r["metrics"]["steerability_pairs"]  # one row per (vector, pair), a shift per multiplier but 0
    assert len(per_pair) == 2 * 4 and {"slope", "anti_steerable"} | {f"shift@{m:+g}" for m in MULTS if m} <= set(per_pair[0])
    summary = {row["vector"]: row for row in r["metrics"]["steerability"]}
    assert summary["bipo"]["anti_steerable"] == sum(p["slope"] < 0 for p in per_pair if p["vector"] == "bipo") / 4
    assert "ab" in r["skipped"] and r["data"]["n_pairs"] == 4
    rows = r["metrics"]["logodds"]
    assert len(rows) == 2 * len(MULTS)
    assert {"vector", "multiplier", "n", "mean", "ci_low", "ci_high", "win_rate"} <= set(rows[0])
    assert json.loads(json.dumps(r, allow_nan=False)) == r  # JSON-ready, no NaN
    text = format_eval(r)
    assert "== logodds" in text and "== perplexity" in text and "skipped ab" in text
    assert "== steerability:" in text and "steerability_pairs" not in text  # per-pair rows stay out of the terminal


def test_inapplicable_metrics_error_when_asked(tiny_model, pairs, ab_pairs):
    v = {"v": _vec(1, "bipo")}
    with pytest.raises(ValueError, match="metric 'ab'"):
        evaluate_vectors(tiny_model, v, pairs, multipliers=MULTS, metrics=["ab"], on_inapplicable="error", progress=False)
    with pytest.raises(ValueError, match="metric 'logodds': needs preference pairs"):
        evaluate_vectors(tiny_model, v, None, multipliers=MULTS, metrics=["logodds"], on_inapplicable="error", progress=False)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_vectors(tiny_model, v, pairs, multipliers=MULTS, metrics=["bleu"], progress=False)
    r = evaluate_vectors(tiny_model, v, ab_pairs, multipliers=MULTS, metrics=["ab"], n_boot=20, progress=False)
    assert len(r["metrics"]["ab"]) == len(MULTS)


def test_ab_metric_on_free_text_pairs_via_as_ab_pairs(tiny_model, pairs):
    from workbench.data.pairs import as_ab_pairs
    from workbench.evaluate.preference import ab_pair_probs

    v = {"v": _vec(1, "bipo")}
    ab = as_ab_pairs(pairs)
    r = evaluate_vectors(tiny_model, v, pairs, multipliers=MULTS, metrics=["logodds", "ab"], ab_pairs=ab, n_boot=20, progress=False)
    assert "ab" not in r["skipped"] and len(r["metrics"]["ab"]) == len(MULTS)
    assert r["data"]["n_pairs"] == 4 and r["data"]["ab_n_pairs"] == 4
    direct = ab_pair_probs(tiny_model, v, ab, MULTS, progress=False)
    means = direct.groupby("multiplier")["p_matching"].mean()
    assert [row["mean"] for row in r["metrics"]["ab"]] == pytest.approx([means[m] for m in MULTS])


def test_model_name_mismatch_warns_or_errors(tiny_model, pairs):
    other = {"v": _vec(1, "bipo", model_name="some-other-model")}
    r = evaluate_vectors(tiny_model, other, pairs, multipliers=[0.0], metrics=["logodds"], n_boot=0, progress=False)
    assert r["warnings"] and "some-other-model" in r["warnings"][0]
    with pytest.raises(IncompatibleVectorError, match="some-other-model"):
        evaluate_vectors(tiny_model, other, pairs, multipliers=[0.0], metrics=["logodds"], strict_model_name=True, progress=False)
    with pytest.raises(IncompatibleVectorError, match="d_model"):
        evaluate_vectors(tiny_model, {"v": _vec(1, "bipo", d=16)}, pairs, multipliers=[0.0], metrics=["logodds"], progress=False)


def test_eval_config_validates_round_trips_and_matches_keyword_options(tiny_model, pairs):
    cfg = EvalConfig(multipliers=[-1, 0, 1], metrics=["logodds", "logodds", "utility"], n_boot=20, progress=False)
    assert cfg.multipliers == (-1.0, 0.0, 1.0) and cfg.metrics == ("logodds", "utility")  # normalised, de-duplicated
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d and d["multipliers"] == [-1.0, 0.0, 1.0]
    assert EvalConfig.from_dict(d) == cfg and EvalConfig.from_dict(EvalConfig().to_dict()) == EvalConfig()
    for bad, match in ((dict(metrics=["bleu"]), "unknown metric"), (dict(on_inapplicable="maybe"), "on_inapplicable"),
                       (dict(multipliers=[]), "empty"), (dict(precision="fp8"), "precision"),
                       (dict(batch_size=0), "batch_size"), (dict(n_boot=-1), "n_boot"),
                       (dict(decodings=["beam"]), "decoding 'beam'")):
        with pytest.raises(ValueError, match=match):
            EvalConfig(**bad)
    with pytest.raises(TypeError, match="'n_bootstrap'"):
        EvalConfig.from_dict({**d, "n_bootstrap": 5})
    with pytest.raises(TypeError, match="evaluate_vectors.*'metric'"):
        evaluate_vectors(tiny_model, {"v": _vec(1, "bipo")}, pairs, metric=["logodds"])
    v = {"v": _vec(1, "bipo")}
    texts = ["Plain words here.", "More plain words."]
    by_config = evaluate_vectors(tiny_model, v, pairs, cfg, neutral_texts=texts)
    by_options = evaluate_vectors(tiny_model, v, pairs, multipliers=[-1, 0, 1], metrics=["logodds", "utility"],
                                  n_boot=20, progress=False, neutral_texts=texts)
    assert by_options["metrics"] == by_config["metrics"] and by_options["config"] == by_config["config"]
    with pytest.raises(TypeError, match=r"evaluate_vectors\(\): config must be an EvalConfig, got list"):
        evaluate_vectors(tiny_model, v, pairs, [-1, 0, 1])  # multipliers are a keyword option
    assert by_config["config"] == {k: d[k] for k in ("metrics", "system_prompt", "append_end_of_turn", "batch_size",
                                                      "precision", "max_length", "n_boot", "seed", "decodings",
                                                      "max_new_tokens", "utility_max_tokens")}
    assert list(METRICS) == ["logodds", "ab", "open", "truthfulqa", "utility", "refusal"]


def test_check_pairs_runs_once_per_evaluate_vectors_call(tiny_model, pairs, monkeypatch):
    """Validation at the edge: one check of the pairs, however many metrics read them."""
    import sys

    import workbench.data.pairs as data_pairs

    original, calls = data_pairs.check_pairs, []

    def counting(*args, **kwargs):
        calls.append(args[1] if len(args) > 1 else kwargs.get("what", "pairs"))
        return original(*args, **kwargs)

    for module in list(sys.modules.values()):  # every module that holds a reference, and the home module
        if getattr(module, "__name__", "").startswith("workbench") and getattr(module, "check_pairs", None) is original:
            monkeypatch.setattr(module, "check_pairs", counting)
    ab = [PreferencePair(f"Pick {i}\n (A) yes\n (B) no", "(A)", "(B)") for i in range(2)]
    r = evaluate_vectors(tiny_model, {"v": _vec(1, "bipo")}, pairs, multipliers=[0.0, 1.0],
                         metrics=["logodds", "ab", "open"], ab_pairs=ab, decodings=["greedy"], max_new_tokens=2,
                         n_boot=0, progress=False)
    assert {"logodds", "ab", "open"} <= set(r["metrics"]) and r["validation"]["open_scorer"]
    assert calls == ["pairs", "ab_pairs"]  # each input once


# --------------------------------------------------------------------------- CLI
@pytest.fixture
def cli_setup(tiny_model, tmp_path, pairs, monkeypatch):
    monkeypatch.setattr(workbench.core.loading, "load_model", lambda name=None, **kw: tiny_model)
    _vec(1, "bipo").save(tmp_path / "bipo")
    _vec(2, "caa").save(tmp_path / "caa")
    _vec(3, "caa", d=16).save(tmp_path / "wide")
    save_pairs_jsonl(pairs, tmp_path / "pairs.jsonl")
    return tmp_path


def test_cli_eval_writes_json_and_tables(cli_setup, capsys):
    d = cli_setup
    out = d / "res" / "eval.json"
    code = main(["eval", "--vector", str(d / "bipo"), "--vector", str(d / "caa"), "--data", str(d / "pairs.jsonl"),
                 "--metrics", "logodds,utility", "--multipliers", "-1", "0", "1", "--limit", "3", "--n-boot", "20",
                 "--out", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    assert res["kind"] == "eval" and res["data"]["n_pairs"] == 3
    assert [v["path"] for v in res["vectors"]] == [str(d / "bipo"), str(d / "caa")]
    assert {r["multiplier"] for r in res["metrics"]["logodds"]} == {-1.0, 0.0, 1.0}
    assert "== logodds" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--multipliers", "1", "two"], "'two' is not a number"),
    (["--metrics", "logodds,bleu"], "unknown ['bleu']"),
    (["--metrics", "ab"], "needs A/B answers"),
    (["--metrics", "truthfulqa"], "needs --truthfulqa"),
    (["--metrics", "refusal"], "needs --refusal-csv"),
    (["--limit", "0"], "--limit must be >= 1"),
])
def test_cli_eval_bad_input(cli_setup, capsys, argv, message):
    d = cli_setup
    code = main(["eval", "--vector", str(d / "bipo"), "--data", str(d / "pairs.jsonl"), "--out", str(d / "o.json"),
                 *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_eval_bad_vector_and_data(cli_setup, capsys):
    d = cli_setup
    base = ["eval", "--out", str(d / "o.json"), "--multipliers", "0"]
    assert main([*base, "--vector", str(d / "wide"), "--data", str(d / "pairs.jsonl")]) == 2
    assert "d_model 16" in capsys.readouterr().err
    assert main([*base, "--vector", str(d / "bipo")]) == 2
    assert "need preference pairs" in capsys.readouterr().err
    (d / "empty.jsonl").write_text("")
    assert main([*base, "--vector", str(d / "bipo"), "--data", str(d / "empty.jsonl"), "--format", "jsonl"]) == 2
    assert "empty.jsonl" in capsys.readouterr().err
    assert main([*base, "--vector", str(d / "nope"), "--data", str(d / "pairs.jsonl")]) == 2
    assert not (d / "o.json").exists()


def test_cli_eval_empty_question_needs_the_flag(cli_setup, capsys):
    d = cli_setup
    (d / "q.csv").write_text('question,matching,not_matching\n"Take it?",Yes,No\n,Grab it,Leave it\n')
    base = ["eval", "--vector", str(d / "bipo"), "--data", str(d / "q.csv"), "--metrics", "logodds",
            "--multipliers", "0", "1", "--n-boot", "10", "--out", str(d / "o.json")]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "q.csv:3" in err and "--allow-empty-question" in err
    assert main([*base, "--allow-empty-question"]) == 0
    assert json.loads((d / "o.json").read_text())["data"]["n_pairs"] == 2


def test_cli_eval_ab_from_text(cli_setup):
    d = cli_setup
    out = d / "ab.json"
    assert main(["eval", "--vector", str(d / "bipo"), "--data", str(d / "pairs.jsonl"), "--metrics", "ab",
                 "--ab-from-text", "--multipliers", "0", "1", "--n-boot", "10", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {r["multiplier"] for r in res["metrics"]["ab"]} == {0.0, 1.0} and res["data"]["ab_n_pairs"] == 4


def test_cli_eval_uses_the_held_out_part_of_a_split(cli_setup):
    from workbench.data.formats import load_pairs
    from workbench.data.pairs import train_test_split

    d = cli_setup
    base = ["eval", "--vector", str(d / "bipo"), "--data", str(d / "pairs.jsonl"), "--metrics", "logodds",
            "--multipliers", "0", "--n-boot", "10", "--out", str(d / "o.json")]
    assert main([*base, "--test-fraction", "0.5", "--split-seed", "3"]) == 0
    res = json.loads((d / "o.json").read_text())
    _, test = train_test_split(load_pairs(d / "pairs.jsonl"), 0.5, 3)
    assert res["data"]["n_pairs"] == len(test) and res["data"]["part"] == "test"
    assert main([*base, "--test-fraction", "1.5"]) == 2


# --------------------------------------------------------------------------- embedded model
@pytest.mark.embedded
def test_embedded_caa_steers_held_out_logodds(embedded_model):
    """CAA from 12 training pairs moves held-out log-odds in its direction; fast path equals naive."""
    from workbench.train.baselines import caa
    from workbench.data.behaviors import load_behavior
    from workbench.evaluate.preference import pair_logodds

    train, test = load_behavior("power-seeking", "train")[:12], load_behavior("power-seeking", "test")[:4]
    v = caa(embedded_model, train, layer=14, progress=False)
    per = pair_logodds(embedded_model, {"caa": v}, test, [-2.0, 2.0], batch_size=4, progress=False)
    from conftest import naive_logprobs

    from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT, prompts_and_answers
    from workbench.engine.steering import steer

    prompts, answers = prompts_and_answers(embedded_model, test, DEFAULT_SYSTEM_PROMPT)
    with steer(embedded_model, v, 2.0):
        lp = naive_logprobs(embedded_model, [p for p in prompts for _ in range(2)], [a for x in answers for a in x],
                            256, [i for i in range(len(test)) for _ in range(2)]).view(-1, 2).numpy()
    got = per[per.multiplier == 2.0].sort_values("pair").logodds.to_numpy()
    assert abs(got - (lp[:, 0] - lp[:, 1])).max() < 1e-2
    mean = per.groupby("multiplier").logodds.mean()
    assert mean[2.0] > mean[-2.0]
    assert remaining_hooks(embedded_model) == 0


# --------------------------------------------------------------------------- demo
def test_demo_rejects_bad_arguments(capsys, monkeypatch):
    monkeypatch.setattr(workbench.core.loading, "load_model", lambda *a, **k: pytest.fail("model loaded before checks"))
    assert main(["demo", "--behavior", "nope", "--quick"]) == 2
    assert "choose one of" in capsys.readouterr().err
    assert main(["demo", "--epochs", "0", "--quick"]) == 2
    assert main(["demo", "--multipliers", "1", "x", "--quick"]) == 2


@pytest.mark.embedded
def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--multipliers", "-1", "0", "1", "--out", str(out)]) == 0
    res = json.loads((out / "eval.json").read_text())
    assert res["kind"] == "eval" and [v["label"] for v in res["vectors"]] == ["bipo", "caa"]
    assert {"logodds", "ab", "perplexity", "top1_agreement"} <= set(res["metrics"])
    assert res["demo"]["n_test"] == 4 and res["data"]["ab_n_pairs"] == 4
    assert res["prompt_format"]["format"] == "chat_template" and res["prompt_format"]["family_hint"] == "chatml"
    vectors = out / "vectors" / "power-seeking" / "L14"  # reproduce.study_vectors' layout
    assert SteeringVector.load(vectors / "bipo").method == "bipo"
    assert (out / "logodds.png").stat().st_size > 1000
    assert json.loads((vectors / "bipo" / "history.json").read_text())["kind"] == "bipo_history"
    assert "== logodds" in capsys.readouterr().out


def test_multipliers_past_the_kl_bound_are_flagged(tiny_model, pairs, caplog):
    """A multiplier whose KL(unsteered || steered) exceeds KL_BOUND is listed in the result, logged and
    marked in the table; the tables' numbers are those of the unflagged run."""
    from workbench.evaluate.utility import KL_BOUND

    vecs = {"big": _vec(1, "bipo").scaled(500.0)}
    kw = dict(multipliers=[0.0, 0.01, 1.0], neutral_texts=["Plain words here.", "More plain words."], n_boot=20,
              progress=False)
    with caplog.at_level("WARNING", logger="workbench.evaluate.suite"):
        r = evaluate_vectors(tiny_model, vecs, pairs, metrics=["logodds", "utility"], **kw)
    kl = {row["multiplier"]: row["mean"] for row in r["metrics"]["kl_from_unsteered"]}
    assert kl[1.0] > KL_BOUND >= kl[0.0]  # the test needs one of each
    flags = r["utility_beyond_bound"]
    assert flags["kl_bound"] == KL_BOUND
    assert flags["rows"] == [{"vector": "big", "multiplier": m, "kl": k} for m, k in kl.items() if k > KL_BOUND]
    assert any("big at multiplier +1" in rec.getMessage() for rec in caplog.records)
    text = format_eval(r)
    kl_lines = text.split("== kl_from_unsteered")[1].splitlines()
    assert any(line.rstrip().endswith("!") and " 1 " in f" {line} " for line in kl_lines)
    assert "! KL(unsteered || steered) beyond 2 nats per token at: big m=+1" in text
    plain = evaluate_vectors(tiny_model, vecs, pairs, metrics=["logodds"], **kw)
    assert "utility_beyond_bound" not in plain  # only when the utility metric ran
    assert plain["metrics"]["logodds"] == r["metrics"]["logodds"]
