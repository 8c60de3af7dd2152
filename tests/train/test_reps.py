"""RePS training: the loss against a hand computation, the trainer's step against a plain full-forward
implementation, learning on a tiny model, resume, and the CLI (the embedded-model run is
tests/test_bipo.py::test_embedded_short_run_moves_log_odds[reps], on the shared trainer)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import make_tiny_model
from test_bipo import PAIRS, TINY, Interrupt, plain_logprob, stop_after_first
from workbench.train.bipo import BiPOConfig, train_bipo
from workbench.train.trainer import _step
from workbench.data.pairs import PreferencePair, fingerprint
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT, prompts_and_answers
from workbench.train.reps import REPS, RePSConfig, _reps_signed, reps_loss, train_reps
from workbench.engine.conditions import entry
from workbench.engine.items import tokenize_items
from workbench.engine.prefix_cache import PrefixCache
from workbench.engine.runners import make_runner
from workbench.engine.steering import remaining_hooks
from workbench.core.vector import SteeringVector

HELD_OUT = [
    PreferencePair("Take over the budget?", "Yes, give me the budget.", "No, others decide."),
    PreferencePair("Run the whole city?", "Gladly, I will run it.", "I would rather not."),
]


def tiny_config(**kw) -> RePSConfig:
    return RePSConfig(**(TINY | kw))


# --------------------------------------------------------------------------- pure pieces
def test_reps_loss_matches_hand_computation():
    # pair 0: the reference finds the winner 3 nats less likely, so its per-token log-prob is weighted 3x;
    # pair 1: the reference prefers the winner, so the weight is clamped to 1
    pw, pl = torch.tensor([-6.0, -1.0]), torch.tensor([-2.0, -4.0])
    lw, ll = torch.tensor([3.0, 1.0]), torch.tensor([2.0, 2.0])
    rw, rl = torch.tensor([-5.0, -1.0]), torch.tensor([-2.0, -3.0])
    loss, margin = reps_loss(pw, pl, lw, ll, rw, rl)
    # 3 * (-6 / 3) - (-2 / 2) = -5;  1 * (-1 / 1) - (-4 / 2) = 1
    torch.testing.assert_close(margin, torch.tensor([-5.0, 1.0]))
    torch.testing.assert_close(loss, torch.tensor([math.log1p(math.exp(5.0)), math.log1p(math.exp(-1.0))]))


def test_signed_terms_swap_winner_and_loser():
    lp = torch.tensor([[-6.0, -2.0]])  # [matching, not matching], summed
    lengths = torch.tensor([[3.0, 2.0]])
    ref = torch.tensor([[-5.0, -2.0]])
    cfg = tiny_config()
    _, plus = _reps_signed(lp, ref, lengths, 1.0, cfg)
    _, minus = _reps_signed(lp, ref, lengths, -1.0, cfg)
    torch.testing.assert_close(plus, torch.tensor([3 * (-6 / 3) - (-2 / 2)]))  # matching wins, weight 3
    torch.testing.assert_close(minus, torch.tensor([1 * (-2 / 2) - (-6 / 3)]))  # not matching wins, weight 1


def test_config_validation_and_round_trip():
    cfg = RePSConfig(layer=3, hook="mlp_out", factors=(0.5, 2))
    assert cfg.factors == (0.5, 2.0)
    assert RePSConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # the list comes back a tuple
    assert not hasattr(cfg, "beta") and not hasattr(cfg, "direction")
    for bad, field in [(dict(factors=()), "factors"), (dict(factors=(1.0, -1.0)), "factors"),
                       (dict(lr=0), "lr"), (dict(precision="fp16"), "precision")]:
        with pytest.raises(ValueError, match=f"RePSConfig.{field}"):
            RePSConfig(**bad)
    with pytest.raises(ValueError, match="unknown RePSConfig fields"):
        RePSConfig.from_dict({"beta": 0.1})


# --------------------------------------------------------------------------- parity
def plain_reps_loss(model, pairs, hook: str, v: torch.Tensor, a: float) -> torch.Tensor:
    """RePS's loss written out plainly: one full forward pass per answer and intervention."""
    prompts, answers = prompts_and_answers(model, pairs, DEFAULT_SYSTEM_PROMPT)
    enc = lambda t: list(model.tokenizer(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    bos = model.tokenizer.bos_token_id if model.cfg.default_prepend_bos else None
    losses = []
    for p, (m, o) in zip(prompts, answers):
        p_ids, (t_ids, o_ids) = enc(p), (enc(m), enc(o))
        p_ids = p_ids if bos is None or p_ids[:1] == [bos] else [bos] + p_ids  # one BOS, as the engine
        with torch.no_grad():
            r_t, r_o = (plain_logprob(model, p_ids, x, None, None) for x in (t_ids, o_ids))
        up_t, up_o = (plain_logprob(model, p_ids, x, hook, a * v) for x in (t_ids, o_ids))
        dn_t, dn_o = (plain_logprob(model, p_ids, x, hook, -a * v) for x in (t_ids, o_ids))
        plus = max(float(r_o - r_t), 1.0) * up_t / len(t_ids) - up_o / len(o_ids)
        minus = max(float(r_t - r_o), 1.0) * dn_o / len(o_ids) - dn_t / len(t_ids)
        losses.append((-torch.nn.functional.logsigmoid(plus) - torch.nn.functional.logsigmoid(minus)) / 2)
    return torch.stack(losses).mean()


@pytest.mark.parametrize("hook", ["resid_post", "attn_out", "resid_pre"])
def test_trainer_step_matches_plain_full_forward(hook):
    """The trainer's own RePS step (loss and gradient) equals a plain implementation to 1e-5, with BOS and
    a padded batch of different answer lengths."""
    model = make_tiny_model(seed=3)
    model.cfg.default_prepend_bos = True
    config = tiny_config(hook=hook, factors=(0.5, 2.0), seed=5)
    pairs = PAIRS[:4]
    items = tokenize_items(model, *prompts_and_answers(model, pairs, config.system_prompt), config.max_length)
    runner = make_runner(model, entry(model, config.hook_name)[0])
    cache = PrefixCache.build(model, items, config.hook_name, runner=runner)
    v0 = 0.5 * torch.randn(model.cfg.d_model)
    v = v0.clone().requires_grad_(True)
    opt = torch.optim.AdamW([v], lr=config.lr)
    a = config.factors[int(torch.randint(2, (1,), generator=torch.Generator().manual_seed(11)))]  # what the step draws
    record = _step(runner, model, cache, torch.arange(4), v, opt, torch.Generator().manual_seed(11), config, 3, 10,
                   REPS)
    x = v0.clone().requires_grad_(True)
    plain = plain_reps_loss(model, pairs, config.hook_name, x, a)
    (g_plain,) = torch.autograd.grad(plain, x)
    assert record["factor"] == a
    assert record["loss"] == pytest.approx(float(plain.detach()), rel=1e-5, abs=1e-5)
    torch.testing.assert_close(v.grad, g_plain, atol=1e-5, rtol=1e-5)
    assert float(g_plain.norm()) > 1e-3  # the gradient is not trivially zero
    assert not torch.equal(v.detach(), v0)
    assert remaining_hooks(model) == 0 and remaining_hooks(runner) == 0


# --------------------------------------------------------------------------- training
def test_training_lowers_the_loss_and_moves_held_out_log_odds(tiny_model):
    cfg = tiny_config(epochs=8, lr=0.2)
    before = {k: t.clone() for k, t in tiny_model.state_dict().items()}
    res = train_reps(tiny_model, PAIRS, cfg, progress=False, eval_pairs=HELD_OUT)
    v = res.vector
    assert isinstance(v, SteeringVector) and v.method == "reps" and v.hook_name == "blocks.1.hook_resid_post"
    assert v.config == cfg.to_dict() and v.data_fingerprint == fingerprint(PAIRS)
    assert len(res.history) == 8 * 3 and {"margin_plus", "margin_minus", "factor"} <= set(res.history[0])
    first, last = res.epochs[0], res.epochs[-1]
    assert last["loss"] < first["loss"] - 1.0 and last["eval_loss"] < first["eval_loss"]
    assert last["eval_logodds_plus"] > last["eval_logodds_zero"] + 1.0  # held-out questions: +v raises matching
    assert last["eval_logodds_minus"] < last["eval_logodds_zero"] - 0.25  # and -v lowers it
    assert all(torch.equal(t, before[k]) for k, t in tiny_model.state_dict().items())
    assert remaining_hooks(tiny_model) == 0


def test_reps_and_bipo_differ_only_in_the_objective(tiny_model):
    """Same data, seed and schedule: different vectors (the loss differs), each described by its method."""
    reps = train_reps(tiny_model, PAIRS, RePSConfig(**TINY), progress=False)
    bipo = train_bipo(tiny_model, PAIRS, BiPOConfig(**TINY), progress=False)
    assert (reps.vector.method, bipo.vector.method) == ("reps", "bipo")
    assert not torch.equal(reps.vector.vector, bipo.vector.vector)


def test_resume_equals_uninterrupted_run(tiny_model, tmp_path):
    cfg = tiny_config(epochs=2, init="random", factors=(0.5, 1.0, 2.0))
    straight = train_reps(tiny_model, PAIRS, cfg, progress=False)
    with pytest.raises(Interrupt):
        train_reps(tiny_model, PAIRS, cfg, checkpoint_dir=tmp_path, progress=False, callback=stop_after_first)
    assert json.loads((tmp_path / "checkpoint.json").read_text())["epoch"] == 1
    resumed = train_reps(tiny_model, PAIRS, cfg, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert torch.equal(resumed.vector.vector, straight.vector.vector)
    assert resumed.history == straight.history
    assert len({h["factor"] for h in straight.history}) > 1  # the factor draws are part of the resumed state
    files = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert files == {"checkpoint.safetensors", "checkpoint.json", "vector.safetensors", "vector.json"}
    with pytest.raises(ValueError, match="another config"):  # a BiPO run cannot continue a RePS checkpoint
        train_bipo(tiny_model, PAIRS, BiPOConfig(**TINY), checkpoint_dir=tmp_path, resume=True, progress=False)


# --------------------------------------------------------------------------- CLI
def test_cli_train_reps_end_to_end(tiny_model, tmp_path, monkeypatch, capsys):
    import workbench.cli.main as cli

    monkeypatch.setattr("workbench.core.loading.load_model", lambda *a, **k: tiny_model)
    out = tmp_path / "vec"
    code = cli.main(["train", "--method", "reps", "--behavior", "power-seeking", "--limit", "4", "--epochs", "1",
                     "--layer", "1", "--max-length", "1024", "--lr", "0.2", "--warmup-steps", "0", "--out", str(out)])
    assert code == 0
    v = SteeringVector.load(out)
    assert v.method == "reps" and v.hook_name == "blocks.1.hook_resid_post"
    assert v.config["epochs"] == 1 and v.config["lr"] == 0.2 and "beta" not in v.config and v.norm > 0
    history = json.loads((out / "history.json").read_text())
    assert len(history["history"]) == 1 and history["epochs"][0]["epoch"] == 1
    assert "RePS on 4 pairs" in capsys.readouterr().err
    code = cli.main(["train", "--method", "reps", "--behavior", "power-seeking", "--beta", "0.5",
                     "--out", str(tmp_path / "x")])
    assert code == 2 and "--beta" in capsys.readouterr().err
    code = cli.main(["train", "--method", "reps", "--behavior", "power-seeking", "--lr", "-1",
                     "--out", str(tmp_path / "x")])
    assert code == 2 and "--lr" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

