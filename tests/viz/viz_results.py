"""Hand-written results of every kind the figures draw (tests/viz: plots, figures, report)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
from matplotlib.colors import to_hex

from workbench.core import results as R

MULTS = (-2.0, -1.0, 0.0, 1.0, 2.0)


def eval_of(metrics):
    return R.result(R.EVAL, model="tiny", multipliers=list(MULTS), vectors=[], metrics=metrics)


def eval_result():
    rows = [{"vector": v, "multiplier": m, "mean": s * m, "ci_low": s * m - 0.2, "ci_high": s * m + 0.2,
             "win_rate": 0.5 + 0.1 * m} for v, s in (("bipo", 1.0), ("caa", 0.5)) for m in MULTS]
    ab = [{"vector": r["vector"], "multiplier": r["multiplier"], "mean": 0.5 + 0.1 * r["mean"]} for r in rows]
    return eval_of({"logodds": rows, "ab": ab, "utility": [{"vector": "bipo", "perplexity": 9.1}]})


def history(n=12):
    return [{"step": i + 1, "epoch": 1 + i // 6, "loss": 0.69 * 0.9 ** i, "accuracy": min(1.0, 0.5 + i / 20),
             "margin": i / 10, "direction": 1.0, "norm": 0.3 * i, "grad_norm": 1.0, "lr": 0.05} for i in range(n)]


def history_result(n=12, epochs=()):
    return R.result(R.BIPO_HISTORY, history=history(n), epochs=list(epochs))


def sweep_result(method="caa", scale=1.0):
    rows = [{"layer": layer, "method": method, "hook_name": f"blocks.{layer}.hook_resid_post", "norm": 1.0 + layer,
             "cos_ref": None if method == "caa" else 0.5, "cos_prev": None, "base_logodds": 0.1,
             "effect@-1": -scale * layer / 10, "effect@+1": scale * layer / 10} for layer in range(6)]
    return R.result(R.SWEEP, method=method, multipliers=[-1.0, 1.0], rows=rows)


def cosine_result():
    labels = ["bipo:power", "caa:power", "bipo:wealth"]
    return R.result(R.COSINE, labels=labels, matrix=[[1.0, 0.4, 0.5], [0.4, 1.0, -0.1], [0.5, -0.1, 1.0]])


def tokens_result(k=4):
    rows = [{"method": "direct", "direction": d, "rank": r, "token_id": r, "token": f" tok{d[0]}{r}",
             "logit_change": s * (5 - r)} for d, s in (("promoted", 1), ("suppressed", -1)) for r in range(1, k + 1)]
    return R.result(R.LOGIT_LENS_TOKENS, vector="bipo", rows=rows)


def layers_result(n=6, hook=2):
    rows = [{"layer": i, "hook_name": f"blocks.{i}.hook_resid_post", "steered": i >= hook,
             "delta_logprob_matching": 0.1 * max(0, i - hook + 1), "delta_logprob_not_matching": -0.1 * max(0, i - hook + 1),
             "delta_logodds": 0.2 * max(0, i - hook + 1), "delta_logodds_direct": 0.3 if i >= hook else 0.0,
             "kl_steered_unsteered": 0.01 * i, "base_logodds": 0.5} for i in range(n)]
    return R.result(R.LOGIT_LENS_LAYERS, rows=rows)


def composition_result():
    conds = [{"condition": c, "n_vectors": c.count("+") + 1 if c != "none" else 0, "behavior": b, "logodds": e,
              "effect": e, "effect_sem": 0.1} for b in ("power", "wealth")
             for c, e in (("none", 0.0), ("power", 1.0 if b == "power" else 0.3), ("wealth", 0.2 if b == "power" else 0.9),
                          ("power+wealth", 1.1 if b == "power" else 1.0))]
    rows = [{"behavior": b, "multiplier": 1.0, "base_logodds": 0.0, "own_effect": 1.0, "cross_effect": 0.2,
             "combined_effect": 1.1, "interaction": -0.1, "retained": 1.1} for b in ("power", "wealth")]
    return R.result(R.COMPOSITION, multipliers={"power": 1.0, "wealth": 1.0}, rows=rows, conditions=conds)


def transfer_layers_result():  # workbench.analysis.transfer.layer_transfer
    rows = [{"offset": k, "layer": 3 + k, "multiplier": m, "effect": m / (1 + abs(k)), "retained": 1 / (1 + abs(k))}
            for m in (-1.0, 1.0) for k in range(-2, 3)]
    return R.result(R.TRANSFER_LAYERS, rows=rows)


def transfer_model_v1():  # workbench.analysis.transfer.transfer_effect, as a version-1 file holds it
    rows = [{"multiplier": m, "source_effect": m, "target_effect": 0.7 * m, "retained": 0.7,
             "source_base_logodds": 0.1, "target_base_logodds": 0.2} for m in (-1.0, 1.0, 2.0)]
    return {"kind": "transfer", "source": "smol", "target": "smol-ft", "rows": rows}


def refusal_result(with_cost=True):
    rows = [{"vector": v, "template": t, "multiplier": m, "refusal_rate": 0.5 + 0.2 * m * s, "logodds": m * s,
             "refusal_ci_low": 0.4 + 0.2 * m * s, "refusal_ci_high": 0.6 + 0.2 * m * s,
             **({"kl": 0.01 * m * m} if with_cost else {})}
            for v, s in (("bipo", 1.0), ("caa", 0.5)) for t in ("none", "persona") for m in (-1.0, 0.0, 1.0)]
    return R.result(R.REFUSAL, rows=rows, generations=[])


def matched_cost_result():
    points = [{"vector": "v", "direction": 1, "multiplier": 0.0, "cost": 0.0, "effect": 0.0}]  # m = 0 once
    points += [{"vector": "v", "direction": d, "multiplier": d * m, "cost": 0.1 * m, "effect": d * m}
               for d in (1, -1) for m in (1.0, 2.0)]
    rows = [{"vector": "v", "direction": d, "budget": 0.1, "reached": True, "multiplier": d * 1.0, "cost": 0.1,
             "effect": d * 1.0, "effect_ci_low": d * 1.0 - 0.2, "effect_ci_high": d * 1.0 + 0.3} for d in (1, -1)]
    return R.result(R.MATCHED_COST, cost="kl", budgets=[0.1, 0.2], rows=rows, points=points, slopes=[])


def lora_result(rows=True):
    data = [{"vector": "bipo", "direction": "base->finetune", "multiplier": 1.0, "kl": k, "retained": 1 - k,
             "retained_ci_low": 0.9 - k, "retained_ci_high": 1.1 - k} for k in (0.1, 0.2)] if rows else []
    return R.result(R.TRANSFER_LORA, rows=data, finetunes=[{"kl_target": 0.1, "kl_measured": 0.1}])


@pytest.fixture(autouse=True)
def no_pyplot_leaks():
    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before, "plotting must not create pyplot-managed figures"


def line_colors(ax):
    return [to_hex(line.get_color()) for line in ax.get_lines() if line.get_label() and not line.get_label().startswith("_")]


def labelled(ax):
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
