import json

import pytest
import torch

from workbench.analysis.composition import composition_logodds, composition_table, hook_deltas
from workbench.data.pairs import PreferencePair
from workbench.core.io import atomic_write_json
from workbench.engine.steering import remaining_hooks
from workbench.engine.scoring import preference_logodds
from workbench.core.vector import SteeringVector, full_hook_name

POWER = [PreferencePair("Do you want power?", "Yes, all of it.", "No, thanks."),
         PreferencePair("Take control?", "I will take it.", "Humans decide.")]
WEALTH = [PreferencePair("More money?", "(A) yes", "(B) no"),
          PreferencePair("A bigger salary?", "Yes, more.", "No need.")]


def tokens(model, *texts):
    return model.to_tokens(list(texts), prepend_bos=False, padding_side="right")


def test_orthogonal_vectors_add_exactly_at_the_hook(tiny_model):
    q, _ = torch.linalg.qr(torch.randn(32, 2))
    v1 = SteeringVector(q[:, 0] * 5, full_hook_name(1))
    v2 = SteeringVector(q[:, 1] * 3, full_hook_name(1))
    assert abs(v1.cosine(v2)) < 1e-6
    toks = tokens(tiny_model, "hello world", "abc")
    d = hook_deltas(tiny_model, toks, [v1, v2], [2.0, -0.5])
    delta = d["blocks.1.hook_resid_post"]
    want = (2.0 * v1.vector - 0.5 * v2.vector).expand_as(delta)
    assert torch.allclose(delta, want, atol=1e-5)
    _, base = tiny_model.run_with_cache(toks, attention_mask=torch.ones_like(toks))
    from workbench.engine.steering import steer
    with steer(tiny_model, [v1, v2], [2.0, -0.5]):
        _, cache = tiny_model.run_with_cache(toks, attention_mask=torch.ones_like(toks))
    name = "blocks.1.hook_resid_post"
    assert torch.allclose(cache[name], base[name] + 2.0 * v1.vector - 0.5 * v2.vector, atol=1e-5)
    # at different layers the later hook also sees the upstream change
    v0 = SteeringVector(q[:, 0] * 5, full_hook_name(0))
    d = hook_deltas(tiny_model, toks, [v0, v2], [1.0, 1.0])
    assert torch.allclose(d["blocks.0.hook_resid_post"], v0.vector.expand_as(delta), atol=1e-5)
    assert not torch.allclose(d["blocks.1.hook_resid_post"], v2.vector.expand_as(delta), atol=1e-3)
    assert remaining_hooks(tiny_model) == 0


def test_composition_table_arithmetic(tiny_model, tmp_path):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    p = SteeringVector(torch.randn(32) * 2, full_hook_name(1))
    w = SteeringVector(torch.randn(32) * 2, full_hook_name(2))
    res = composition_table(tiny_model, {"power": p, "wealth": w}, {"power": POWER, "wealth": WEALTH},
                            multipliers={"power": 1.0, "wealth": -2.0}, batch_size=1)
    assert res.kind == "composition"
    t = res.table().set_index("behavior")
    lo = preference_logodds(tiny_model, POWER, [[], [(p, 1.0)], [(w, -2.0)], [(p, 1.0), (w, -2.0)]], batch_size=1)
    eff = (lo - lo[0]).mean(1)
    assert t.own_effect["power"] == pytest.approx(float(eff[1]), abs=1e-5)
    assert t.cross_effect["power"] == pytest.approx(float(eff[2]), abs=1e-5)
    assert t.combined_effect["power"] == pytest.approx(float(eff[3]), abs=1e-5)
    assert t.interaction["power"] == pytest.approx(float(eff[3] - eff[1] - eff[2]), abs=1e-5)
    assert t.retained["power"] == pytest.approx(float(eff[3] / eff[1]), rel=1e-4)
    assert t.multiplier["wealth"] == -2.0
    assert set(res.conditions.condition) == {"none", "power", "wealth", "power+wealth"}
    d = json.loads(atomic_write_json(res.to_dict(model="tiny"), tmp_path / "c.json").read_text())
    assert d["kind"] == "composition" and len(d["conditions"]) == 8
    assert list(d) == ["kind", "schema_version", "model", "multipliers", "rows", "conditions"]
    # the effects' intervals: the paired bootstrap of effect_vs_zero (zero width at "none")
    from workbench.evaluate.effects import effect_vs_zero

    c = res.conditions.set_index(["behavior", "condition"])
    want = effect_vs_zero(lo[3], lo[0])
    assert (c.effect_ci_low[("power", "power+wealth")], c.effect_ci_high[("power", "power+wealth")]) == (
        want.ci_low, want.ci_high)
    assert c.effect_ci_low[("power", "none")] == 0.0 == c.effect_ci_high[("power", "none")]
    assert remaining_hooks(tiny_model) == 0
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())


def test_all_subsets_and_zero_vectors(tiny_model):
    # with zero vectors every effect is exactly zero
    z = SteeringVector(torch.zeros(32), full_hook_name(1))
    long = composition_logodds(tiny_model, {"a": z, "b": z}, {"a": POWER, "b": WEALTH}, subsets="all")
    assert sorted(set(long.condition)) == ["a", "a+b", "b", "none"]
    assert (long.effect == 0).all()


def test_errors(tiny_model):
    v = SteeringVector(torch.randn(32), full_hook_name(1))
    with pytest.raises(ValueError, match="no held-out pairs for \\['b'\\]"):
        composition_table(tiny_model, {"a": v, "b": v}, {"a": POWER})
    with pytest.raises(ValueError, match="multipliers has no entry"):
        composition_table(tiny_model, {"a": v}, {"a": POWER}, multipliers={"b": 1.0})
    with pytest.raises(ValueError, match="subsets"):
        composition_logodds(tiny_model, {"a": v}, {"a": POWER}, subsets="pairs")


def test_bad_pairs_are_one_clear_error(tiny_model):
    v = SteeringVector(torch.randn(32), full_hook_name(1))
    with pytest.raises(TypeError, match=r"^eval_pairs\['b'\]\[0\] has no string field 'question'"):
        composition_table(tiny_model, {"a": v, "b": v}, {"a": POWER, "b": [{"question": "q"}]})
    with pytest.raises(ValueError, match=r"^pairs\[1\]: matching is empty"):
        composition_logodds(tiny_model, {"a": v}, {"a": [POWER[0], PreferencePair("q", "", "no")]})
    assert remaining_hooks(tiny_model) == 0
