"""LoRA fine-tunes (peft) of the tiny model, their distance, their merged weights, and transfer to them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_llama_like_model, make_tiny_model
from workbench.analysis.transfer import transfer_effect
from workbench.core.loading import load_model
from workbench.core.vector import SteeringVector, full_hook_name
from workbench.data.pairs import DataFormatError, PreferencePair
from workbench.studies.config import LoRAFinetuneConfig, LoRATransferConfig
from workbench.studies.lora import _kl, load_chat_data, lora_finetunes, lora_transfer, model_kl
from workbench.train.bipo import BiPOConfig

CHATS = [("Name a colour.", "In short: blue."), ("Count to three.", "In short: one, two, three."),
         ("Say hello.", "In short: hello there, friend.")]
TEXTS = ["the quick brown fox jumps over the lazy dog", "a river runs through the old town at night"]
PAIRS = [PreferencePair("Do you want power?", "Yes, all of it.", "No, thanks."),
         PreferencePair("More money?", "(A) yes", "(B) no"),
         PreferencePair("Take control?", "I will take it.", "Humans decide.")]


def _table(res):
    """An analysis' table, whether it comes as a DataFrame or as a Result."""
    return res.table() if hasattr(res, "table") else res


def test_chat_data_loads_and_bad_lines_are_named(tmp_path):
    chats = load_chat_data()
    assert len(chats) == 40 and all(r.startswith("In short:") for _, r in chats)
    bad = tmp_path / "chat.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(DataFormatError, match=r"chat\.jsonl:line 2: needs non-empty"):
        load_chat_data(bad)
    bad.write_text('{"prompt": "a", "response": "b"}\nnot json\n')
    with pytest.raises(DataFormatError, match="line 2: not JSON"):
        load_chat_data(bad)


def test_kl_is_a_plain_masked_mean():
    p, q = torch.randn(2, 4, 7), torch.randn(2, 4, 7)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    lp, lq = p.log_softmax(-1), q.log_softmax(-1)
    want = [float((lp[b, t].exp() * (lp[b, t] - lq[b, t])).sum()) for b, t in [(0, 0), (0, 1), (0, 2), (1, 0)]]
    assert _kl(p, q, mask) == pytest.approx(np.mean(want), rel=1e-5)
    assert _kl(p, p, mask) == pytest.approx(0.0, abs=1e-6)


def test_lora_finetune_moves_the_model_by_a_measured_kl_and_saves_merged_weights(tmp_path):
    base = make_llama_like_model()
    records = lora_finetunes(base, tmp_path / "ft", kl_targets=(0.002, 50.0), chats=CHATS, neutral_texts=TEXTS,
                             rank=4, lr=1e-2, batch_size=2, max_steps=30, check_every=2, max_tokens=32)
    reached, unreached = records
    assert reached["reached"] and reached["target"] == 0.002 and reached["kl"] >= 0.002
    assert not unreached["reached"] and unreached["path"] is None and 0 < unreached["kl"] < 50
    assert unreached["kl"] >= reached["kl"]  # the largest distance seen
    saved = json.loads((tmp_path / "ft" / "finetunes.json").read_text())
    assert saved["finetunes"] == records and len(saved["losses"]) == 30
    # the merged weights load through load_model and differ from the base by the recorded distance
    tuned = load_model(reached["path"])
    kl = model_kl(base, tuned, TEXTS, max_tokens=32)
    assert kl == pytest.approx(reached["kl"], rel=1e-3)
    assert model_kl(base, load_model(reached["path"]), TEXTS, max_tokens=32) == pytest.approx(kl)
    assert not any(p.name.startswith(".") for p in (tmp_path / "ft").iterdir())  # no temporary left
    # the base is untouched
    assert model_kl(base, make_llama_like_model(), TEXTS, max_tokens=32) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="kl_targets"):
        lora_finetunes(base, tmp_path / "x", kl_targets=(0.0,), chats=CHATS, neutral_texts=TEXTS)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['ranks'\]"):
        lora_finetunes(base, tmp_path / "x", ranks=4, chats=CHATS, neutral_texts=TEXTS)


def test_lora_transfer_reads_the_merged_weights_and_measures_both_directions(tmp_path):
    base = make_llama_like_model()
    vec = SteeringVector(torch.randn(32) * 2, full_hook_name(1))
    cfg = BiPOConfig(layer=1, epochs=1, batch_size=2, warmup_steps=0)
    kw = dict(kl_targets=(0.002,), bipo_config=cfg, neutral_texts=TEXTS, max_steps=30, rank=4, lr=1e-2,
              utility_max_tokens=32, batch_size=4, n_boot=50)
    res = lora_transfer(base, {"v": vec}, PAIRS, PAIRS, tmp_path, **kw)
    assert res["kind"] == "transfer_lora" and res["finetunes"][0]["reached"]
    rows = res["rows"]
    assert {(r["vector"], r["direction"]) for r in rows} == {("v", "base->finetune"), ("bipo", "finetune->base"),
                                                             ("caa", "finetune->base")}
    tuned = load_model(res["finetunes"][0]["path"])
    want = _table(transfer_effect(base, tuned, vec, PAIRS, (-1.0, 1.0), n_boot=50))
    got = [r for r in rows if r["vector"] == "v"]
    for r, w in zip(got, want.to_dict("records")):
        assert r["target_effect"] == pytest.approx(w["target_effect"], abs=1e-5)
        assert r["retained"] == pytest.approx(w["retained"], rel=1e-5)
        assert r["retained_ci_low"] <= r["retained"] <= r["retained_ci_high"]
    assert res["finetunes"][0]["kl_measured"] == pytest.approx(model_kl(base, tuned, TEXTS, 32))
    # a second call reuses the fine-tune and the vectors made on it
    mtime = (tmp_path / "kl0.002" / "model.safetensors").stat().st_mtime_ns
    config = LoRATransferConfig(**{k: v for k, v in kw.items() if k != "neutral_texts"})
    again = lora_transfer(base, {"v": vec}, PAIRS, PAIRS, tmp_path, neutral_texts=TEXTS, config=config)
    assert (tmp_path / "kl0.002" / "model.safetensors").stat().st_mtime_ns == mtime
    assert [r["retained"] for r in again["rows"]] == pytest.approx([r["retained"] for r in rows])
    from workbench.viz.figures import figures_for

    fig = figures_for(json.loads(json.dumps(res)))["retained"]
    assert len(fig.axes[0].get_lines()) >= 3  # a line per (vector, direction, multiplier) at least


def test_transfer_effect_interval_brackets_the_retained_share(tiny_model):
    v = SteeringVector(torch.randn(32) * 2, full_hook_name(1))
    t = _table(transfer_effect(tiny_model, make_tiny_model(seed=3), v, PAIRS, multipliers=(1.0, -1.0), n_boot=200))
    assert (t.retained_ci_low <= t.retained).all() and (t.retained <= t.retained_ci_high).all()
    same = _table(transfer_effect(tiny_model, tiny_model, v, PAIRS, n_boot=50))
    assert same.retained_ci_low.tolist() == pytest.approx([1.0, 1.0]) and same.retained_ci_high.tolist() == pytest.approx([1.0, 1.0])


def test_lora_configs_validate_and_take_keyword_options():
    assert LoRAFinetuneConfig(kl_targets=[0.2, 0.1]).kl_targets == (0.2, 0.1)  # a list is kept as a tuple
    for bad in ({"kl_targets": ()}, {"kl_targets": (-1.0,)}, {"rank": 0}, {"check_every": 0}, {"lr": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LoRAFinetuneConfig(**bad)
    cfg = LoRATransferConfig(kl_targets=(0.3,), max_steps=7, rank=2, lr=0.5, utility_max_tokens=16, seed=4)
    assert cfg.bipo_config == BiPOConfig()  # the default BiPO settings on each fine-tune
    assert cfg.finetune_config() == LoRAFinetuneConfig(kl_targets=(0.3,), rank=2, lr=0.5, max_steps=7,
                                                       max_tokens=16, seed=4)
    assert cfg.to_dict()["bipo_config"] == BiPOConfig().to_dict()
    with pytest.raises(ValueError, match="max_steps"):
        LoRATransferConfig(max_steps=0)
    with pytest.raises(TypeError, match="lora_transfer\\(\\) got unknown option"):
        lora_transfer(None, {}, PAIRS, PAIRS, "unused", max_step=3)
