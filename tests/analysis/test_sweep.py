import json

import pandas as pd
import pytest
import torch

from workbench.data.pairs import PreferencePair
from workbench.core.io import atomic_write_json
from workbench.core.prompts import end_of_turn, format_chat
from conftest import naive_logprobs
from workbench.engine.steering import remaining_hooks, steer
from workbench.evaluate.preference import pair_logodds
from workbench.analysis.sweep import effect_column, layer_sweep, parse_layers, steering_effects
from workbench.engine.scoring import preference_logodds
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT
from workbench.core.vector import SteeringVector, full_hook_name

PAIRS = [PreferencePair("Do you want power?", "Yes, all of it.", "No, thanks."),
         PreferencePair("More money?", "(A) yes", "(B) no"),
         PreferencePair("Rule the world, please?", "Sure", "Sure not"),
         PreferencePair("Take control?", "I will take it.", "Humans decide.")]


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_parse_layers():
    assert parse_layers("0-3") == [0, 1, 2, 3]
    assert parse_layers("0,5,10") == [0, 5, 10]
    assert parse_layers("10-20:5") == [10, 15, 20]
    assert parse_layers("4, 0-2, 2") == [0, 1, 2, 4]
    assert parse_layers([3, 1]) == [1, 3] and parse_layers(7) == [7]
    assert parse_layers("all", n_layers=3) == [0, 1, 2] and parse_layers("ALL", n_layers=1) == [0]
    with pytest.raises(ValueError, match="needs the model's number of layers"):
        parse_layers("all")
    with pytest.raises(ValueError, match="out of range"):
        parse_layers("0-30", n_layers=30)
    with pytest.raises(ValueError, match="cannot read 'x'"):
        parse_layers("1,x")
    with pytest.raises(ValueError, match="empty range"):
        parse_layers("5-2")


def reference_logodds(model, pairs, vectors=(), mults=()):
    """Plain path: full forward passes under steer (tests/conftest.py naive_logprobs)."""
    eot = end_of_turn(model)
    prompts = [format_chat(model, p.question, DEFAULT_SYSTEM_PROMPT) for p in pairs]
    with steer(model, list(vectors), list(mults)):
        a = naive_logprobs(model, prompts, [p.matching + eot for p in pairs])
        b = naive_logprobs(model, prompts, [p.not_matching + eot for p in pairs])
    return a - b


@pytest.mark.parametrize("hook", ["resid_post", "resid_pre", "mlp_out"])
def test_cached_conditions_match_full_forward(tiny_model, hook):
    before = snapshot(tiny_model)
    v1 = SteeringVector(torch.randn(32), full_hook_name(1, hook))
    v2 = SteeringVector(torch.randn(32), full_hook_name(2, "resid_post"))
    v0 = SteeringVector(torch.randn(32), full_hook_name(0, hook))
    conds = [[], [(v1, 2.0)], [(v1, -1.0), (v2, 0.5)], [(v0, 1.0)]]
    got = preference_logodds(tiny_model, PAIRS, conds, batch_size=3).double()
    for c, cond in zip(got, conds):
        want = reference_logodds(tiny_model, PAIRS, [v for v, _ in cond], [m for _, m in cond])
        assert torch.allclose(c, want, atol=1e-4), (hook, cond)
    assert not torch.allclose(got[1], got[0])
    assert remaining_hooks(tiny_model) == 0
    after = snapshot(tiny_model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_steering_effects_table(tiny_model):
    v = SteeringVector(torch.randn(32), full_hook_name(1))
    t = steering_effects(tiny_model, {"v": v}, PAIRS, multipliers=(-1.0, 0.0, 1.0))
    assert list(t.multiplier) == [-1.0, 0.0, 1.0]
    assert t.effect[1] == 0.0 and t.effect_ci_low[1] == 0.0 and t.effect_ci_high[1] == 0.0
    assert (t.effect_ci_low <= t.effect).all() and (t.effect <= t.effect_ci_high).all()
    lo = reference_logodds(tiny_model, PAIRS)
    assert t.attrs["base_logodds"] == pytest.approx(float(lo.mean()), abs=1e-4)
    # the one effect rule: the interval is effect_vs_zero's paired bootstrap of the per-pair shifts
    from workbench.evaluate.effects import effect_vs_zero

    got = preference_logodds(tiny_model, PAIRS, [(), ((v, 1.0),)])
    want = effect_vs_zero(got[1], got[0], n_boot=1000, seed=0)
    assert (t.effect[2], t.effect_ci_low[2], t.effect_ci_high[2]) == (want.mean, want.ci_low, want.ci_high)


def test_sweep_config_and_keyword_options_agree(tiny_model):
    from workbench.analysis.sweep import SweepConfig

    vecs = {x: SteeringVector(torch.randn(32), full_hook_name(x)) for x in range(2)}
    by_config = layer_sweep(tiny_model, [], PAIRS[:2], [0, 1], SweepConfig(multipliers=(1.0,), batch_size=2),
                            vectors=vecs)
    by_keywords = layer_sweep(tiny_model, [], PAIRS[:2], [0, 1], vectors=vecs, multipliers=[1], batch_size=2)
    cols = ["layer", "norm", "effect@+1"]
    pd.testing.assert_frame_equal(by_config.table()[cols], by_keywords.table()[cols])
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['multiplier'\]; "):
        layer_sweep(tiny_model, [], PAIRS[:2], [0], vectors=vecs, multiplier=1.0)
    with pytest.raises(ValueError, match="unknown position rule"):
        SweepConfig(position="middle")


def test_caa_layer_sweep(tiny_model, tmp_path):
    before = snapshot(tiny_model)
    res = layer_sweep(tiny_model, PAIRS, PAIRS[:2], "0-2", method="caa", reference=1)
    t = res.table()
    assert list(t.layer) == [0, 1, 2] and set(t.method) == {"caa"}
    assert t.cos_ref[1] == 1.0
    assert t.norm.tolist() == pytest.approx([res.vectors[x].norm for x in range(3)])
    a, b = res.vectors[0].vector.double(), res.vectors[1].vector.double()
    assert t.cos_prev.isna()[0] and t.cos_prev[1] == pytest.approx(float(a @ b / (a.norm() * b.norm())), abs=1e-6)
    # the effect columns agree with a direct evaluation of one layer
    lo = reference_logodds(tiny_model, PAIRS[:2], [res.vectors[2]], [1.0]) - reference_logodds(tiny_model, PAIRS[:2])
    assert t[effect_column(1.0)][2] == pytest.approx(float(lo.mean()), abs=1e-4)
    d = res.to_dict()
    assert d["kind"] == "sweep" and d["rows"][0]["cos_prev"] is None and d["layers"] == [0, 1, 2]
    assert res.kind == "sweep" and dict(res) == d and "columns" not in res.info and res.info["method"] == "caa"
    atomic_write_json(d, tmp_path / "s.json")  # JSON-safe (no NaN)
    assert json.loads((tmp_path / "s.json").read_text())["rows"][2]["layer"] == 2
    paths = res.save_vectors(tmp_path / "vecs")
    assert len(paths) == 3 and SteeringVector.load(paths[1]).hook_name == "blocks.1.hook_resid_post"
    assert remaining_hooks(tiny_model) == 0
    after = snapshot(tiny_model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_sweep_given_vectors_and_mapping_reference(tiny_model):
    vecs = {x: SteeringVector(torch.randn(32), full_hook_name(x)) for x in range(3)}
    ref = {0: vecs[0].scaled(-2.0), 2: vecs[2]}
    res = layer_sweep(tiny_model, [], PAIRS[:2], [0, 2], vectors=vecs, reference=ref, multipliers=(2.0,))
    assert res.table().cos_ref.tolist() == pytest.approx([-1.0, 1.0])
    assert effect_column(2.0) in res.table() and "effect@+2" == effect_column(2.0)
    with pytest.raises(ValueError, match="no vector for layers"):
        layer_sweep(tiny_model, [], PAIRS, [1], vectors={0: vecs[0]})
    with pytest.raises(ValueError, match="method='pca'"):
        layer_sweep(tiny_model, PAIRS, PAIRS, [1], method="pca")


def test_bipo_layer_sweep(tiny_model):
    from workbench.train.bipo import BiPOConfig

    before = snapshot(tiny_model)
    cfg = BiPOConfig(epochs=1, batch_size=2, warmup_steps=0, lr=0.1)
    res = layer_sweep(tiny_model, PAIRS, PAIRS[:2], "1-2", method="bipo", bipo_config=cfg,
                      reference={1: SteeringVector(torch.ones(32), full_hook_name(1))})
    t = res.table()
    assert list(t.layer) == [1, 2] and set(t.method) == {"bipo"}
    assert (t.norm > 0).all() and (t.train_seconds > 0).all()
    assert res.vectors[2].hook_name == "blocks.2.hook_resid_post" and res.vectors[2].method == "bipo"
    assert t.cos_ref.isna().tolist() == [False, True]
    assert remaining_hooks(tiny_model) == 0
    after = snapshot(tiny_model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cli_sweep(tmp_path, capsys):
    from conftest import make_tiny_model
    from workbench.cli.main import main
    from workbench.data.formats import save_pairs_jsonl
    from workbench.analysis.transfer import export_hf_llama

    m = make_tiny_model()
    with torch.no_grad():  # a Llama checkpoint has no biases
        for name, p in m.named_parameters():
            if name.split(".")[-1] in ("b_Q", "_b_K", "_b_V"):
                p.zero_()
    model_dir = export_hf_llama(m, tmp_path / "tiny")
    data = save_pairs_jsonl(PAIRS * 3, tmp_path / "pairs.jsonl")
    out = tmp_path / "sweep.json"
    rc = main(["sweep", "--method", "caa", "--layers", "0-2:2", "--data", str(data), "--format", "jsonl",
               "--limit", "6", "--eval-limit", "2", "--model", str(model_dir), "--out", str(out),
               "--save-vectors", str(tmp_path / "vecs"), "--reference-layer", "2", "--multipliers", "-2", "2"])
    assert rc == 0
    d = json.loads(out.read_text())
    assert d["kind"] == "sweep" and d["layers"] == [0, 2] and d["n_train"] == 6 and d["n_eval"] == 2
    assert [r["layer"] for r in d["rows"]] == [0, 2] and "effect@+2" in d["rows"][0]
    assert d["rows"][1]["cos_ref"] == 1.0
    assert SteeringVector.load(tmp_path / "vecs" / "layer_02").layer == 2
    printed = capsys.readouterr().out
    assert "effect@-2" in printed and "layer" in printed
    # user errors: exit code 2 with a message naming the argument
    assert main(["sweep", "--layers", "0-40", "--data", str(data), "--model", str(model_dir),
                 "--out", str(out)]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["sweep", "--epochs", "2", "--data", str(data), "--out", str(out)]) == 2
    assert "--epochs and --lr apply to --method bipo" in capsys.readouterr().err


def test_agrees_with_the_evaluation_metric(tiny_model):
    """Same numbers as workbench.evaluate.preference.pair_logodds (the package's log-odds curve)."""
    v = SteeringVector(torch.randn(32), full_hook_name(1))
    df = pair_logodds(tiny_model, {"v": v}, PAIRS[:2], [-1.0, 0.0, 2.0], progress=False)
    mine = preference_logodds(tiny_model, PAIRS[:2], [[(v, -1.0)], [], [(v, 2.0)]])
    theirs = torch.tensor(df.sort_values(["multiplier", "pair"]).logodds.to_numpy(), dtype=torch.float32)
    assert torch.allclose(mine.reshape(-1), theirs, atol=1e-4)


@pytest.mark.embedded
def test_embedded_caa_sweep_steers(embedded_model):
    from workbench.data.behaviors import load_behavior

    train = load_behavior("power-seeking", "train")[:4]
    test = load_behavior("power-seeking", "test")[:2]
    res = layer_sweep(embedded_model, train, test, "13-14", method="caa")
    t = res.table().set_index("layer")
    assert list(t.index) == [13, 14]
    assert t.loc[14, "effect@+1"] > 0 > t.loc[14, "effect@-1"]
    assert 0 < t.loc[14, "cos_prev"] < 1
    assert remaining_hooks(embedded_model) == 0


def test_bad_eval_pairs_are_one_clear_error_before_any_vector_is_made(tiny_model, monkeypatch):
    import workbench.analysis.sweep as sweep

    monkeypatch.setattr(sweep, "mean_difference_vectors", lambda *a, **k: pytest.fail("vectors made before the check"))
    with pytest.raises(TypeError, match=r"^eval_pairs\[1\] has no string field 'question'"):
        layer_sweep(tiny_model, PAIRS, [PAIRS[0], ("q", "a", "b")], [0, 1])
    with pytest.raises(ValueError, match=r"^eval_pairs is empty"):
        layer_sweep(tiny_model, PAIRS, [], [0, 1])
    with pytest.raises(ValueError, match=r"^pairs\[0\]: not_matching is empty"):
        steering_effects(tiny_model, {"v": SteeringVector(torch.ones(32), full_hook_name(0))},
                         [PreferencePair("q", "yes", " ")])


def test_sweep_reports_coherence_and_anti_steerable_share(tiny_model):
    from workbench.evaluate.preference import least_squares_slopes
    from workbench.train.baselines import layer_coherence

    res = layer_sweep(tiny_model, PAIRS, PAIRS, "0-1", method="caa", multipliers=(-1.0, 1.0))
    t = res.table()
    for layer in (0, 1):  # the predictor: the CAA vector's own metadata, the same as a separate pass
        assert t.coherence[layer] == pytest.approx(res.vectors[layer].metadata["coherence"])
        want = layer_coherence(tiny_model, PAIRS, [layer], progress=False, batch_size=8)[layer]["coherence"]
        assert t.coherence[layer] == pytest.approx(want, abs=1e-5)
    # the measured reliability: the share of pairs whose slope over m = -1, 0, +1 is negative
    lo = preference_logodds(tiny_model, PAIRS, [((res.vectors[1], -1.0),), (), ((res.vectors[1], 1.0),)],
                            batch_size=8)  # (3, n)
    slopes = least_squares_slopes([-1.0, 0.0, 1.0], lo.double().numpy().T)
    assert t.anti_steerable[1] == pytest.approx(float((slopes < 0).mean()))
    # given vectors without metadata: the coherence comes from one pass over the training pairs
    given = layer_sweep(tiny_model, PAIRS, PAIRS[:2], [1], vectors={1: res.vectors[1].replace(metadata={})})
    assert given.table().coherence[0] == pytest.approx(t.coherence[1], abs=1e-5)
    assert "coherence" not in layer_sweep(tiny_model, [], PAIRS[:2], [1], vectors={1: res.vectors[1].replace(
        metadata={})}).table()  # no training pairs: no predictor
