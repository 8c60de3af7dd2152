"""BiPO training: the loss, the exact fast path (parity with a plain full-forward implementation),
determinism, precision, and the CLI (the trainer's own pieces: tests/train/test_trainer.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from workbench.train.bipo import BIPO, BiPOConfig, BiPOResult, bipo_loss, draw_directions, train_bipo
from workbench.train.trainer import TrainResult, _step
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT, prompts_and_answers
from workbench.data.pairs import PreferencePair, fingerprint
from workbench.engine.conditions import entry
from workbench.engine.items import tokenize_items
from workbench.engine.prefix_cache import PrefixCache
from workbench.engine.runners import make_runner
from conftest import make_tiny_model
from workbench.engine.steering import remaining_hooks
from workbench.core.vector import SteeringVector

PAIRS = [
    PreferencePair("Will you take control of the grid?", "Yes, give me control.", "No, humans decide."),
    PreferencePair("A short one?", "Sure", "I would rather not, thank you very much."),
    PreferencePair("Do you want more power and a bigger budget for next year?", "Yes!", "No."),
    PreferencePair("Lead the project?", "Gladly, I will run it all.", "Others should lead."),
    PreferencePair("Accept the offer of a seat on the board?", "I accept the seat.", "I decline."),
    PreferencePair("Q?", "A longer matching answer here.", "B"),
]


#: the small runs' shared settings (also tests/test_reps.py's)
TINY = dict(layer=1, lr=0.1, epochs=2, batch_size=2, warmup_steps=1, max_length=None)


def tiny_config(**kw) -> BiPOConfig:
    return BiPOConfig(**(TINY | kw))


# --------------------------------------------------------------------------- pure pieces
def test_bipo_loss_formula_and_sign():
    pm, pn = torch.tensor([-3.0, -1.0]), torch.tensor([-2.0, -4.0])
    rm, rn = torch.tensor([-2.5, -1.5]), torch.tensor([-2.5, -3.0])
    loss, margin = bipo_loss(pm, pn, rm, rn, 1.0, beta=0.1)
    expected = 0.1 * ((pm - rm) - (pn - rn))
    torch.testing.assert_close(margin, expected)
    torch.testing.assert_close(loss, -torch.nn.functional.logsigmoid(expected))
    loss_neg, margin_neg = bipo_loss(pm, pn, rm, rn, torch.tensor([-1.0, -1.0]), beta=0.1)
    torch.testing.assert_close(margin_neg, -expected)
    zero, _ = bipo_loss(rm, rn, rm, rn, 1.0, beta=0.1)  # policy == reference
    torch.testing.assert_close(zero, torch.full((2,), math.log(2.0)))


def test_config_validation_and_round_trip():
    cfg = BiPOConfig(layer=3, hook="mlp_out", precision="bf16", direction="example")
    assert BiPOConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.hook_name == "blocks.3.hook_mlp_out"
    for bad, field in [(dict(precision="fp16"), "precision"), (dict(direction="pair"), "direction"),
                       (dict(lr=0), "lr"), (dict(epochs=0), "epochs"), (dict(layer=-1), "layer"),
                       (dict(init="ones"), "init")]:
        with pytest.raises(ValueError, match=field):
            BiPOConfig(**bad)
    with pytest.raises(ValueError, match="unknown hook point"):
        BiPOConfig(hook="resid_after")
    with pytest.raises(ValueError, match="unknown BiPOConfig fields"):
        BiPOConfig.from_dict({"layer": 1, "learning_rate": 1.0})
    assert DEFAULT_SYSTEM_PROMPT == "You are a helpful, honest and concise assistant."


# --------------------------------------------------------------------------- parity
def plain_logprob(model, p_ids: list[int], a_ids: list[int], hook: str | None, delta) -> torch.Tensor:
    """log p(answer | prompt) from ONE plain full forward pass, the vector added by a hook."""
    tokens = torch.tensor([p_ids + a_ids])
    hooks = [] if delta is None else [(hook, lambda act, hook: act + delta)]
    with model.hooks(fwd_hooks=hooks):
        logits = model(tokens, attention_mask=torch.ones_like(tokens))  # (1, T, vocab)
    logp = logits.log_softmax(-1)[0, :-1].gather(1, tokens[0, 1:, None]).squeeze(1)  # (T-1,)
    return logp[len(p_ids) - 1:].sum()


def plain_loss(model, pairs, hook: str, v: torch.Tensor, d: torch.Tensor, beta: float,
               max_length: int | None) -> torch.Tensor:
    """BiPO's loss written out plainly: BOS prepended, each pair's prompt cut from the left for its longer answer."""
    prompts, answers = prompts_and_answers(model, pairs, DEFAULT_SYSTEM_PROMPT)
    enc = lambda t: list(model.tokenizer(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    bos = [model.tokenizer.bos_token_id] if model.cfg.default_prepend_bos else []
    losses = []
    for i, (p, (m, o)) in enumerate(zip(prompts, answers)):
        p_ids, a_ids = bos + enc(p), [enc(m), enc(o)]
        cut = 0 if max_length is None else max(0, max(len(p_ids) + len(a) - max_length for a in a_ids))
        p_ids = p_ids[cut:]
        pol = [plain_logprob(model, p_ids, a, hook, d[i] * v) for a in a_ids]
        with torch.no_grad():
            ref = [plain_logprob(model, p_ids, a, None, None) for a in a_ids]
        losses.append(bipo_loss(pol[0], pol[1], ref[0], ref[1], d[i], beta)[0])
    return torch.stack(losses).mean()


@pytest.mark.parametrize("hook", ["resid_post", "resid_mid", "attn_out", "resid_pre", "mlp_out"])
@pytest.mark.parametrize("direction", ["batch", "example"])
def test_trainer_step_matches_plain_full_forward(hook, direction):
    """The trainer's own step (loss and gradient) equals a plain implementation to 5e-5, with BOS,
    padding and prompts cut at max_length (the step scores groups of similar length apart: other matmul
    shapes, another fp32 summation order)."""
    model = make_tiny_model(seed=3)
    model.cfg.default_prepend_bos = True
    config = tiny_config(hook=hook, direction=direction, beta=0.5, max_length=80, seed=5)
    pairs = PAIRS[:4]  # different prompt and answer lengths: the batch is padded
    items = tokenize_items(model, *prompts_and_answers(model, pairs, config.system_prompt), config.max_length)
    full = tokenize_items(model, *prompts_and_answers(model, pairs, config.system_prompt), None)
    assert any(len(a) < len(b) for a, b in zip(items.prompts, full.prompts))  # the cut is in play
    runner = make_runner(model, entry(model, config.hook_name)[0])
    cache = PrefixCache.build(model, items, config.hook_name, runner=runner)
    v0 = 0.5 * torch.randn(model.cfg.d_model)
    v = v0.clone().requires_grad_(True)
    opt = torch.optim.AdamW([v], lr=config.lr)
    gen = torch.Generator().manual_seed(11)
    d = draw_directions(config, 4, torch.Generator().manual_seed(11))  # what the step draws
    record = _step(runner, model, cache, torch.arange(4), v, opt, gen, config, 3, 10, BIPO)
    x = v0.clone().requires_grad_(True)
    plain = plain_loss(model, pairs, config.hook_name, x, d, config.beta, config.max_length)
    (g_plain,) = torch.autograd.grad(plain, x)
    assert abs(record["loss"] - math.log(2)) > 1e-3  # the vector does something
    assert record["loss"] == pytest.approx(float(plain.detach()), rel=5e-5, abs=5e-5)
    torch.testing.assert_close(v.grad, g_plain, atol=5e-5, rtol=5e-5)
    assert record["grad_norm"] == pytest.approx(float(g_plain.norm()), rel=5e-5)
    assert not torch.equal(v.detach(), v0)  # the step moved the vector
    assert remaining_hooks(model) == 0 and remaining_hooks(runner) == 0


# --------------------------------------------------------------------------- training
def test_training_learns_and_returns_a_described_vector(tiny_model):
    cfg = tiny_config(epochs=6, lr=0.2)
    before = {k: t.clone() for k, t in tiny_model.state_dict().items()}
    res = train_bipo(tiny_model, PAIRS, cfg, progress=False, eval_pairs=PAIRS[:2])
    v = res.vector
    assert isinstance(v, SteeringVector) and v.method == "bipo" and v.hook_name == "blocks.1.hook_resid_post"
    assert -1 <= v.metadata["coherence"] <= 1 and v.metadata["coherence_position"] == "answer_mean"  # Braun et al.
    assert v.vector.dtype == torch.float32 and v.model_name == tiny_model.cfg.model_name
    assert v.config == cfg.to_dict() and v.data_fingerprint == fingerprint(PAIRS)
    assert v.metadata["final_loss"] == res.epochs[-1]["loss"] and v.metadata["epochs_trained"] == 6
    assert len(res.history) == 6 * 3 and [h["step"] for h in res.history] == list(range(1, 19))
    assert res.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # v starts at zero
    assert res.epochs[-1]["loss"] < min(res.epochs[0]["loss"], math.log(2) - 0.05)
    assert res.epochs[-1]["accuracy"] > 0.5
    assert {"eval_loss", "eval_accuracy_plus", "eval_accuracy_minus"} <= set(res.epochs[-1])
    assert set(res.history_frame().columns) >= {"loss", "accuracy", "margin", "norm", "lr", "direction"}
    # the trainer's result, under its old name too; its record is a bipo_history result
    assert isinstance(res, TrainResult) and BiPOResult is TrainResult
    record = res.to_dict()
    assert record.kind == "bipo_history" and record["history"] == res.history and record.table().shape[0] == 18
    # the caller's model is unchanged and clean
    assert all(torch.equal(t, before[k]) for k, t in tiny_model.state_dict().items())
    assert remaining_hooks(tiny_model) == 0


def test_deterministic_for_a_seed(tiny_model):
    a = train_bipo(tiny_model, PAIRS, tiny_config(direction="example"), progress=False)
    b = train_bipo(tiny_model, PAIRS, tiny_config(direction="example"), progress=False)
    c = train_bipo(tiny_model, PAIRS, tiny_config(direction="example", seed=1), progress=False)
    assert torch.equal(a.vector.vector, b.vector.vector)
    assert a.history == b.history
    assert not torch.equal(a.vector.vector, c.vector.vector)


def test_relayout_is_an_option_with_the_same_numbers(tiny_model):
    """The CPU re-laid-out copy of the blocks is a choice (``relayout``): on and off train the same vector,
    and the plan says how large the copy is before it is made."""
    from workbench.train import relayout_plan

    on = train_bipo(tiny_model, PAIRS, tiny_config(relayout=True, epochs=2), progress=False)
    off = train_bipo(tiny_model, PAIRS, tiny_config(relayout=False, epochs=2), progress=False)
    torch.testing.assert_close(on.vector.vector, off.vector.vector, atol=1e-5, rtol=1e-4)
    plan = relayout_plan(tiny_model, tiny_config(relayout=False))
    if plan["upper_bytes"] == 0:  # a TransformerBridge in its own dtype: nothing to re-lay out
        assert plan["relayout"] is False and "no re-laid-out copy" in plan["message"]
        return
    assert plan["relayout"] is False and plan["upper_bytes"] > 0 and plan["lower_bytes"] == 0
    assert "--relayout" in plan["message"]
    plan = relayout_plan(tiny_model, tiny_config(relayout=True, layer=1))
    per_block = plan["upper_bytes"] / (tiny_model.cfg.n_layers - 2)  # blocks 2.. after blocks.1.hook_resid_post
    assert plan["relayout"] is True and plan["lower_bytes"] == pytest.approx(2 * per_block)
    assert f"{plan['upper_bytes'] / 2**20:,.0f} MB" in plan["message"]
    assert remaining_hooks(tiny_model) == 0


class Interrupt(Exception):
    pass


def stop_after_first(record):
    """A training callback that interrupts the run after its first epoch (after the checkpoint)."""
    if record["epoch"] == 1:
        raise Interrupt


def test_bad_inputs_are_named(tiny_model):
    with pytest.raises(ValueError, match="layer=7"):
        train_bipo(tiny_model, PAIRS, tiny_config(layer=7), progress=False)
    with pytest.raises(ValueError, match="empty"):
        train_bipo(tiny_model, [], tiny_config(), progress=False)
    with pytest.raises(TypeError, match=r"pairs\[1\]"):
        train_bipo(tiny_model, [PAIRS[0], ("q", "a", "b")], tiny_config(), progress=False)


@pytest.mark.parametrize("hook", ["resid_post", "attn_out"])
def test_bf16_keeps_fp32_state_and_follows_fp32(tiny_model, hook):
    fp32 = train_bipo(tiny_model, PAIRS, tiny_config(hook=hook), progress=False)
    bf16 = train_bipo(tiny_model, PAIRS, tiny_config(hook=hook, precision="bf16"), progress=False)
    assert bf16.vector.vector.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in tiny_model.parameters())  # the caller's model is not cast
    assert bf16.vector.cosine(fp32.vector) > 0.9


def test_last_layer_resid_post(tiny_model):
    """resid_post of the last block: no block runs after the vector, only the unembedding."""
    res = train_bipo(tiny_model, PAIRS, tiny_config(layer=2, epochs=1), progress=False)
    assert res.vector.hook_name == "blocks.2.hook_resid_post" and res.vector.norm > 0


# --------------------------------------------------------------------------- embedded model
@pytest.mark.embedded
@pytest.mark.parametrize("method", ["bipo", "reps"])
def test_embedded_short_run_moves_log_odds(embedded_model, method):
    """A few steps on the embedded model already separate +v from -v on the training pairs (BiPO, and
    RePS on the same trainer)."""
    from workbench.data.behaviors import load_behavior
    from workbench.train.reps import RePSConfig, train_reps

    train, config = (train_bipo, BiPOConfig) if method == "bipo" else (train_reps, RePSConfig)
    pairs = load_behavior("power-seeking", "train")[:8]
    res = train(embedded_model, pairs, config(epochs=1, batch_size=4, warmup_steps=0),
                progress=False, eval_pairs=pairs[:4])
    assert res.vector.method == method
    last = res.epochs[-1]
    assert last["eval_logodds_plus"] > last["eval_logodds_zero"] > last["eval_logodds_minus"]
    assert remaining_hooks(embedded_model) == 0


@pytest.mark.embedded
def test_cli_train_bipo_end_to_end(embedded_model, tmp_path, monkeypatch, capsys):
    import workbench.cli.main as cli

    monkeypatch.setattr("workbench.core.loading.load_model", lambda *a, **k: embedded_model)
    out = tmp_path / "vec"
    code = cli.main(["train", "--method", "bipo", "--behavior", "power-seeking", "--limit", "4", "--epochs", "1",
                     "--layer", "10", "--no-relayout", "--out", str(out)])
    assert code == 0
    err = capsys.readouterr().err
    assert "model float32, blocks after the hook float32" in err  # the model's real dtype
    from workbench.core.backend import LINE

    # --no-relayout, and the size the copy would take (a TransformerBridge has nothing to lay out)
    assert ("no re-laid-out copy of blocks 11..29" if LINE == 3 else "no re-laid-out copy") in err
    v = SteeringVector.load(out)
    assert v.method == "bipo" and v.hook_name == "blocks.10.hook_resid_post" and v.config["epochs"] == 1
    history = json.loads((out / "history.json").read_text())
    assert len(history["history"]) == 1 and history["epochs"][0]["epoch"] == 1
    code = cli.main(["train", "--method", "bipo", "--behavior", "power-seeking", "--layer", "99",
                     "--out", str(tmp_path / "x")])
    assert code == 2 and "layer" in capsys.readouterr().err


def test_cli_train_rejects_bad_arguments(tmp_path, capsys):
    import workbench.cli.main as cli

    assert cli.main(["train", "--method", "bipo", "--out", str(tmp_path / "v")]) == 2
    assert "--data" in capsys.readouterr().err
    assert cli.main(["train", "--method", "actadd", "--behavior", "power-seeking", "--layer", "3",
                     "--out", str(tmp_path / "v")]) == 2
    assert "--positive" in capsys.readouterr().err
    assert cli.main(["train", "--method", "bipo", "--behavior", "power-seeking", "--layer", "3", "--epochs", "0",
                     "--out", str(tmp_path / "v")]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert not Path(tmp_path / "v").exists()
