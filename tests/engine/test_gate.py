import pytest
import torch

from workbench.core.prompts import format_chat
from workbench.core.vector import SteeringVector, full_hook_name
from workbench.engine.gate import SteeringCondition, cast_scores, condition_scores, masked_mean
from workbench.engine.steering import generate, remaining_hooks, steer


def _vec(seed: int = 0, layer: int = 1, scale: float = 3.0) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(torch.randn(32, generator=g) * scale, full_hook_name(layer))


def _cond(threshold: float, layer: int = 1, hook: str = "resid_pre", seed: int = 1) -> SteeringCondition:
    g = torch.Generator().manual_seed(seed)
    return SteeringCondition(torch.randn(32, generator=g), full_hook_name(layer, hook), threshold=threshold)


OPEN, CLOSED = -2.0, 2.0  # a cosine is always above -2 and never above 2


def _tokens(model, *texts):
    return model.to_tokens(list(texts), prepend_bos=False, padding_side="right")


@pytest.mark.parametrize("hook", ["resid_pre", "resid_post"])
def test_gate_closed_is_unsteered_and_open_is_steered_exactly(tiny_model, hook):
    toks = _tokens(tiny_model, "abcdef", "uvwxyz")
    v = _vec()
    base = tiny_model(toks)
    with steer(tiny_model, v, 1.5):
        steered = tiny_model(toks)
    with steer(tiny_model, v, 1.5, condition=_cond(CLOSED, hook=hook)):
        closed = tiny_model(toks)
    with steer(tiny_model, v, 1.5, condition=_cond(OPEN, hook=hook)):
        opened = tiny_model(toks)
    assert torch.equal(closed, base) and torch.equal(opened, steered)
    assert not torch.equal(base, steered)
    assert remaining_hooks(tiny_model) == 0


def test_per_row_decisions_in_a_mixed_batch(tiny_model):
    toks = _tokens(tiny_model, "abcdef", "uvwxyz")
    cond = _cond(0.0)
    means = tiny_model.run_with_cache(toks, names_filter=cond.hook_name)[1][cond.hook_name].mean(1)
    scores = cast_scores(means, cond.vector)
    assert scores[0] != scores[1]
    cut = cond.with_threshold(float(scores.mean()))  # exactly one row passes
    v = _vec()
    base = tiny_model(toks)
    with steer(tiny_model, v, 2.0):
        steered = tiny_model(toks)
    with steer(tiny_model, v, 2.0, condition=cut):
        gated = tiny_model(toks)
    hi = int(scores.argmax())
    for row in range(2):
        assert torch.equal(gated[row], (steered if row == hi else base)[row])
    assert remaining_hooks(tiny_model) == 0


def test_condition_mask_averages_only_the_prompt_positions(tiny_model):
    act = torch.randn(2, 5, 4)
    mask = torch.tensor([[True, True, False, False, False], [True] * 5])
    out = masked_mean(act, mask)
    assert torch.allclose(out[0], act[0, :2].mean(0)) and torch.allclose(out[1], act[1].mean(0))
    with pytest.raises(ValueError, match="condition_mask"):
        masked_mean(act, mask[:, :3])


def test_generate_gated_equals_plain_or_steered(tiny_model):
    prompts = [format_chat(tiny_model, "a"), format_chat(tiny_model, "a longer question here")]
    v = _vec(scale=4.0)
    plain = generate(tiny_model, prompts, max_new_tokens=8)
    steered = generate(tiny_model, prompts, v, 1.5, max_new_tokens=8)
    assert plain != steered
    assert generate(tiny_model, prompts, v, 1.5, max_new_tokens=8, condition=_cond(CLOSED)) == plain
    assert generate(tiny_model, prompts, v, 1.5, max_new_tokens=8, condition=_cond(OPEN)) == steered
    # one row open, one closed: each as it is alone; with and without the KV cache
    cond = _cond(0.0)
    scores = condition_scores(tiny_model, cond, prompts)
    cut = cond.with_threshold(float(scores.mean()))
    hi = int(scores.argmax())
    expected = [steered[i] if i == hi else plain[i] for i in range(2)]
    assert generate(tiny_model, prompts, v, 1.5, max_new_tokens=8, condition=cut) == expected
    assert generate(tiny_model, prompts, v, 1.5, max_new_tokens=8, condition=cut, use_kv_cache=False) == expected
    assert remaining_hooks(tiny_model) == 0


def test_bad_conditions_are_one_line_value_errors(tiny_model):
    toks = _tokens(tiny_model, "abc")
    v = _vec(layer=1)
    cases = [SteeringCondition(torch.randn(32), "blocks.7.hook_resid_pre"),  # beyond the 3 layers
             SteeringCondition(torch.randn(16), "blocks.0.hook_resid_pre"),  # d_model mismatch
             SteeringCondition(torch.randn(32), "blocks.2.hook_resid_pre")]  # after the vector's hook
    for cond in cases:
        with pytest.raises(ValueError) as err:
            with steer(tiny_model, v, 1.0, condition=cond):
                tiny_model(toks)
        assert "\n" not in str(err.value) and "condition" in str(err.value)
    with pytest.raises(ValueError, match="d_model"):
        generate(tiny_model, "abc", v, 1.0, max_new_tokens=2, condition=cases[1])
    with pytest.raises(ValueError, match="comparator"):
        SteeringCondition(torch.randn(32), "blocks.0.hook_resid_pre", comparator="larger")
    with pytest.raises(ValueError, match="non-zero"):
        SteeringCondition(torch.zeros(32), "blocks.0.hook_resid_pre")
    assert remaining_hooks(tiny_model) == 0


def test_comparator_below_inverts_the_decision():
    cond = SteeringCondition(torch.ones(4), "blocks.0.hook_resid_pre", threshold=0.5)
    scores = torch.tensor([0.2, 0.8])
    assert cond.holds(scores).tolist() == [False, True]
    assert cond.with_threshold(0.5, "below").holds(scores).tolist() == [True, False]


def test_save_load_round_trip(tmp_path):
    cond = SteeringCondition(torch.randn(32), "blocks.1.hook_resid_pre", threshold=0.125, comparator="below",
                             model_name="tiny", metadata={"topic": "power-seeking", "f1": 0.9})
    back = SteeringCondition.load(cond.save(tmp_path / "cond"))
    assert torch.equal(back.vector, cond.vector) and back.hook_name == cond.hook_name
    assert (back.threshold, back.comparator, back.layer, back.metadata["topic"]) == (0.125, "below", 1,
                                                                                   "power-seeking")
    (tmp_path / "cond" / "condition.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="condition.json"):
        SteeringCondition.load(tmp_path / "cond")
