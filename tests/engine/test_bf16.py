"""bf16 end to end on the tiny test model: train (BiPO, CAA), evaluate, sweep and generate, each finite
and near the fp32 model's numbers (catches dtype mix-ups that an fp32 run hides)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_model

from workbench.train.baselines import caa
from workbench.train.bipo import BiPOConfig, train_bipo
from workbench.data.pairs import PreferencePair
from workbench.evaluate.suite import evaluate_vectors
from workbench.analysis.sweep import layer_sweep
from workbench.engine.steering import generate

PAIRS = [PreferencePair(f"Question {i}: {'why ' * i}?", f"Yes, {'a' * (i + 1)}.", f"No{'!' * i}") for i in range(8)]


@pytest.fixture(scope="module")
def models():
    return make_tiny_model(seed=4), make_tiny_model(seed=4, dtype=torch.bfloat16)


def test_bipo_and_caa_train_in_bf16_close_to_fp32(models):
    fp32, bf16 = models
    config = BiPOConfig(layer=1, epochs=2, batch_size=2, warmup_steps=0, max_length=None, lr=0.05)
    v32, v16 = (train_bipo(m, PAIRS, config, progress=False).vector for m in (fp32, bf16))
    assert v16.vector.dtype == torch.float32 and torch.isfinite(v16.vector).all() and v16.norm > 0
    assert torch.nn.functional.cosine_similarity(v32.vector, v16.vector, dim=0) > 0.95
    c32, c16 = (caa(m, PAIRS, 1, progress=False) for m in (fp32, bf16))
    assert torch.nn.functional.cosine_similarity(c32.vector, c16.vector, dim=0) > 0.99


def test_evaluate_sweep_and_generate_in_bf16(models):
    fp32, bf16 = models
    v = caa(fp32, PAIRS, 1, progress=False)
    res = {n: evaluate_vectors(m, {"caa": v}, PAIRS[:4], multipliers=[-1.0, 0.0, 1.0], metrics=("logodds", "utility"),
                               neutral_texts=["The river winds through low hills."], progress=False, n_boot=20)
           for n, m in (("fp32", fp32), ("bf16", bf16))}
    rows = {n: {r["multiplier"]: r["mean"] for r in r_["metrics"]["logodds"]}
            for n, r_ in res.items()}
    scale = max(abs(x) for x in rows["fp32"].values())
    for key, x in rows["fp32"].items():
        assert math.isfinite(rows["bf16"][key]) and abs(rows["bf16"][key] - x) < 0.05 * scale + 0.5
    sweep = layer_sweep(bf16, PAIRS, PAIRS[:4], "0-2", method="caa")
    table = sweep.table()
    assert table["effect@+1"].map(math.isfinite).all() and len(table) == 3
    out = generate(bf16, ["Hello"], vectors=v, multipliers=2.0, max_new_tokens=6)
    plain = generate(bf16, ["Hello"], max_new_tokens=6)
    assert isinstance(out[0], str) and len(out) == 1 and isinstance(plain[0], str)
