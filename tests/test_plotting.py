"""Plotting: every plot from hand-written results, files written atomically, the figures command."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from workbench.viz import figures as F  # noqa: E402
from workbench.viz import plots as P  # noqa: E402
from workbench.core import results as R  # noqa: E402
from workbench.cli.main import main  # noqa: E402

MULTS = (-2.0, -1.0, 0.0, 1.0, 2.0)


def eval_result():
    rows = [{"vector": v, "multiplier": m, "mean": s * m, "ci_low": s * m - 0.2, "ci_high": s * m + 0.2,
             "win_rate": 0.5 + 0.1 * m} for v, s in (("bipo", 1.0), ("caa", 0.5)) for m in MULTS]
    ab = [{"vector": r["vector"], "multiplier": r["multiplier"], "mean": 0.5 + 0.1 * r["mean"]} for r in rows]
    return eval_of({"logodds": rows, "ab": ab, "utility": [{"vector": "bipo", "perplexity": 9.1}]})


def eval_of(metrics):
    return {"kind": "eval", "model": "tiny", "multipliers": list(MULTS), "vectors": [], "metrics": metrics}


def history(n=12):
    return [{"step": i + 1, "epoch": 1 + i // 6, "loss": 0.69 * 0.9 ** i, "accuracy": min(1.0, 0.5 + i / 20),
             "margin": i / 10, "direction": 1.0, "norm": 0.3 * i, "grad_norm": 1.0, "lr": 0.05} for i in range(n)]


def sweep_result(method="caa", scale=1.0):
    rows = [{"layer": layer, "method": method, "hook_name": f"blocks.{layer}.hook_resid_post", "norm": 1.0 + layer,
             "cos_ref": None if method == "caa" else 0.5, "cos_prev": None, "base_logodds": 0.1,
             "effect@-1": -scale * layer / 10, "effect@+1": scale * layer / 10} for layer in range(6)]
    return {"kind": "sweep", "method": method, "multipliers": [-1.0, 1.0], "rows": rows}


def cosine_result():
    labels = ["bipo:power", "caa:power", "bipo:wealth"]
    return {"kind": "cosine", "labels": labels, "matrix": [[1.0, 0.4, 0.5], [0.4, 1.0, -0.1], [0.5, -0.1, 1.0]]}


def tokens_result(k=4):
    rows = [{"method": "direct", "direction": d, "rank": r, "token_id": r, "token": f" tok{d[0]}{r}",
             "logit_change": s * (5 - r)} for d, s in (("promoted", 1), ("suppressed", -1)) for r in range(1, k + 1)]
    return {"kind": "logit_lens_tokens", "vector": "bipo", "rows": rows}


def layers_result(n=6, hook=2):
    rows = [{"layer": i, "hook_name": f"blocks.{i}.hook_resid_post", "steered": i >= hook,
             "delta_logprob_matching": 0.1 * max(0, i - hook + 1), "delta_logprob_not_matching": -0.1 * max(0, i - hook + 1),
             "delta_logodds": 0.2 * max(0, i - hook + 1), "delta_logodds_direct": 0.3 if i >= hook else 0.0,
             "kl": 0.01 * i, "base_logodds": 0.5} for i in range(n)]
    return {"kind": "logit_lens_layers", "rows": rows}


def composition_result():
    conds = [{"condition": c, "n_vectors": c.count("+") + 1 if c != "none" else 0, "behavior": b, "logodds": e,
              "effect": e, "effect_sem": 0.1} for b in ("power", "wealth")
             for c, e in (("none", 0.0), ("power", 1.0 if b == "power" else 0.3), ("wealth", 0.2 if b == "power" else 0.9),
                          ("power+wealth", 1.1 if b == "power" else 1.0))]
    rows = [{"behavior": b, "multiplier": 1.0, "base_logodds": 0.0, "own_effect": 1.0, "cross_effect": 0.2,
             "combined_effect": 1.1, "interaction": -0.1, "retained": 1.1} for b in ("power", "wealth")]
    return {"kind": "composition", "multipliers": {"power": 1.0, "wealth": 1.0}, "rows": rows, "conditions": conds}


def transfer_layers_result():  # workbench.analysis.transfer.layer_transfer
    rows = [{"offset": k, "layer": 3 + k, "multiplier": m, "effect": m / (1 + abs(k)), "retained": 1 / (1 + abs(k))}
            for m in (-1.0, 1.0) for k in range(-2, 3)]
    return {"kind": "transfer_layers", "rows": rows}


def transfer_model_result():  # workbench.analysis.transfer.transfer_effect
    rows = [{"multiplier": m, "source_effect": m, "target_effect": 0.7 * m, "retained": 0.7,
             "source_base_logodds": 0.1, "target_base_logodds": 0.2} for m in (-1.0, 1.0, 2.0)]
    return {"kind": "transfer", "source": "smol", "target": "smol-ft", "rows": rows}


@pytest.fixture(autouse=True)
def _no_pyplot_leaks():
    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before, "plotting must not create pyplot-managed figures"


def _line_colors(ax):
    return [to_hex(line.get_color()) for line in ax.get_lines() if line.get_label() and not line.get_label().startswith("_")]


# --------------------------------------------------------------------------- individual plots
def test_multiplier_curves_lines_bands_and_method_colours():
    fig = P.plot_multiplier_curves(eval_result())
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    labelled = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    assert [ln.get_label() for ln in labelled] == ["bipo", "caa"]
    np.testing.assert_allclose(labelled[0].get_xdata(), MULTS)
    np.testing.assert_allclose(labelled[0].get_ydata(), MULTS)
    np.testing.assert_allclose(labelled[1].get_ydata(), [0.5 * m for m in MULTS])
    assert _line_colors(ax) == [P.METHOD_COLORS["bipo"].lower(), P.METHOD_COLORS["caa"].lower()]
    assert len(ax.collections) == 2  # one bootstrap band per vector
    assert ax.get_xlabel() == "multiplier m" and "log-odds" in ax.get_ylabel()
    assert fig.get_figwidth() == pytest.approx(P.COLUMN_WIDTH)


def test_multiplier_curves_from_table_and_into_given_axes():
    df = pd.DataFrame(eval_result()["metrics"]["ab"])
    fig0 = Figure()
    ax = fig0.add_subplot()
    fig = P.plot_multiplier_curves(df, ax=ax, metric="ab")
    assert fig is fig0 and ax.get_ylabel() == "p(matching answer)"
    assert len(ax.collections) == 0  # no interval columns: no band


def test_training_curves_three_panels_and_held_out():
    fig = P.plot_training_curves(history())
    assert [a.get_ylabel() for a in fig.axes] == ["BiPO loss", "preference acc.", "vector norm"]
    loss_line = fig.axes[0].get_lines()[0]
    np.testing.assert_allclose(loss_line.get_xdata(), np.arange(1, 13))
    np.testing.assert_allclose(loss_line.get_ydata(), [0.69 * 0.9 ** i for i in range(12)])
    epochs = [{"epoch": 1, "step": 6, "loss": 0.5, "eval_loss": 0.6, "eval_accuracy": 0.7},
              {"epoch": 2, "step": 12, "loss": 0.3, "eval_loss": 0.5, "eval_accuracy": 0.8}]
    fig = P.plot_training_curves({"kind": "bipo_history", "history": history(), "epochs": epochs})
    dashed = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_xdata()) == [6, 12]
    assert fig.axes[0].get_legend() is not None


def test_training_curves_overlay_runs_and_bipo_result():
    import torch

    from workbench.train.bipo import BiPOResult
    from workbench.core.vector import SteeringVector

    trained = BiPOResult(SteeringVector(torch.ones(4), "blocks.0.hook_resid_post"), history(), [])
    fig = P.plot_training_curves({"power": history(5), "wealth": trained})
    assert [ln.get_label() for ln in fig.axes[0].get_lines()] == ["power train", "wealth train"]
    np.testing.assert_allclose(fig.axes[0].get_lines()[1].get_ydata(), [r["loss"] for r in history()])
    assert P.plot(trained).axes[0].get_ylabel() == "BiPO loss"  # plot() dispatches on to_dict()'s kind
    fig = P.plot_training_curves(trained.history, ax=Figure().add_subplot(), metric="norm")
    assert fig.axes[0].get_ylabel() == "vector norm"


def test_layer_sweep_effect_at_columns_and_cosine_panel():
    fig = P.plot_layer_sweep({"bipo": sweep_result("bipo", 2.0), "caa": sweep_result("caa")})
    ax_eff, ax_cos = fig.axes
    labels = [ln.get_label() for ln in ax_eff.get_lines() if not ln.get_label().startswith("_")]
    assert labels == ["bipo (m = +1)", "bipo (m = -1)", "caa (m = +1)", "caa (m = -1)"]
    plus = ax_eff.get_lines()[0]
    np.testing.assert_allclose(plus.get_ydata(), [2.0 * x / 10 for x in range(6)])
    assert ax_eff.get_lines()[1].get_linestyle() == "--"
    assert len(ax_cos.get_lines()) == 2  # bipo's cosines (+ the zero line); caa has none
    assert ax_cos.get_xlabel() == "layer"


def test_layer_sweep_accepts_result_objects():
    class FakeSweep:  # workbench.analysis.sweep.SweepResult's interface
        def __init__(self, method):
            self.method = method

        def to_dict(self):
            return sweep_result(self.method)

    fig = P.plot_layer_sweep({"caa": FakeSweep("caa"), "bipo": FakeSweep("bipo")})
    assert [ln.get_label() for ln in fig.axes[0].get_lines()][:2] == ["caa (m = +1)", "caa (m = -1)"]


def test_layer_sweep_plus_minus_layout_single_axes():
    rows = [{"layer": i, "method": "caa", "effect_plus": i, "effect_minus": -i} for i in range(4)]
    fig = P.plot_layer_sweep(rows)
    assert len(fig.axes) == 1
    assert [ln.get_label() for ln in fig.axes[0].get_lines()][:2] == ["caa (+m)", "caa (−m)"]


def test_cosine_heatmap_values_and_annotations():
    fig = P.plot_cosine_heatmap(cosine_result())
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), cosine_result()["matrix"])
    assert ax.images[0].get_clim() == (-1, 1)
    assert len(ax.texts) == 9 and ax.texts[1].get_text() == "0.40"
    assert [t.get_text() for t in ax.get_yticklabels()] == cosine_result()["labels"]
    big = pd.DataFrame(np.eye(30), index=range(30), columns=range(30))
    assert len(P.plot_cosine_heatmap(big).axes[0].texts) == 0  # too many cells to annotate


def test_cosine_heatmap_rejects_mismatched_labels():
    with pytest.raises(P.ResultFormatError, match="2 labels"):
        P.plot_cosine_heatmap({"kind": "cosine", "labels": ["a", "b"], "matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]})


def test_method_cosine_line():
    fig = P.plot_method_cosine([{"layer": i, "cosine": 0.1 * i, "norm_bipo": 1, "norm_caa": 2} for i in range(5)])
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), [0.1 * i for i in range(5)])


def test_logit_lens_tokens_bars_ordered_and_visible_tokens():
    fig = P.plot_logit_lens_tokens(tokens_result())
    ax = fig.axes[0]
    widths = [p.get_width() for p in ax.patches]
    assert len(widths) == 8 and widths == sorted(widths)  # strongest promoted at the top
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1] == "␣tokp1" and labels[0] == "␣toks1"
    colours = {to_hex(p.get_facecolor()) for p in ax.patches}
    assert colours == {P.OKABE_ITO["blue"].lower(), P.OKABE_ITO["vermillion"].lower()}
    assert len(P.plot_logit_lens_tokens(tokens_result(), k=2).axes[0].patches) == 4


def test_logit_lens_tokens_one_panel_per_vector():
    rows = tokens_result()["rows"]
    both = [dict(r, vector="bipo") for r in rows] + [dict(r, vector="caa") for r in rows]
    fig = P.plot_logit_lens_tokens(both)
    assert [a.get_title() for a in fig.axes] == ["bipo", "caa"]


@pytest.mark.parametrize("token, shown", [(" power", "␣power"), ("\n", "\\n"), ("  ", "␣␣"), ("a ", "a␣"), ("$x", r"\$x")])
def test_pretty_token(token, shown):
    assert P.pretty_token(token) == shown


def test_logit_lens_layers_panels_and_shading():
    fig = P.plot_logit_lens_layers(layers_result())
    a1, a2 = fig.axes
    steered = a1.get_lines()[0]
    np.testing.assert_allclose(steered.get_ydata(), [0, 0, 0.2, 0.4, 0.6, 0.8])
    assert a2.get_ylabel() == "KL (nats)"
    spans = [p for p in a1.patches]
    assert len(spans) == 1 and spans[0].get_x() == pytest.approx(-0.5)  # layers 0-1 are before the hook


def test_composition_conditions_bars():
    fig = P.plot_composition(composition_result())
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["power", "wealth", "power+wealth"]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([1.0, 0.2, 1.1, 0.3, 0.9, 1.0])  # power's bars, then wealth's
    assert ax.get_legend() is not None
    fig = P.plot_composition(composition_result()["rows"])  # per-behavior form
    assert len(fig.axes[0].patches) == 8


def test_transfer_layouts():
    fig = P.plot_transfer(transfer_layers_result())
    assert fig.axes[0].get_xlabel() == "layer offset k: applied at L + k (made at L3)"
    lines = [ln for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")]
    assert [ln.get_label() for ln in lines] == ["m = -1", "m = +1"]
    np.testing.assert_allclose(lines[1].get_ydata(), [1 / 3, 1 / 2, 1, 1 / 2, 1 / 3])
    fig = P.plot_transfer(transfer_model_result())
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["m = -1", "m = +1", "m = +2"]
    assert [p.get_height() for p in ax.patches] == pytest.approx([-1, 1, 2, -0.7, 0.7, 1.4])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["smol", "smol-ft"]


def test_missing_columns_name_the_plot_and_columns():
    with pytest.raises(P.ResultFormatError, match="plot_layer_sweep.*effect"):
        P.plot_layer_sweep([{"layer": 1, "norm": 2}])
    with pytest.raises(P.ResultFormatError, match="metric 'ab'"):
        P.plot_multiplier_curves(eval_of({"logodds": []}), metric="ab")
    with pytest.raises(P.ResultFormatError, match="no rows"):
        P.plot_training_curves([])


# --------------------------------------------------------------------------- saving and the command
def test_save_figure_writes_png_and_pdf(tmp_path):
    paths = P.save_figure(P.plot_multiplier_curves(eval_result()), tmp_path / "sub" / "curves")
    assert [p.name for p in paths] == ["curves.png", "curves.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.startswith(".")]  # no temp files left
    P.save_figure(P.plot_multiplier_curves(eval_result()), tmp_path / "again.png")  # extension is dropped
    assert (tmp_path / "again.png").is_file() and (tmp_path / "again.pdf").is_file()


def test_figures_for_kinds():
    assert set(F.figures_for(eval_result())) == {"logodds", "ab"}  # utility has no multiplier column
    assert set(F.figures_for(history())) == {"training"}
    with pytest.raises(R.ResultFormatError, match="unknown result kind 'something_else'"):
        F.figures_for({"kind": "something_else", "rows": []})
    assert F.figures_for({"kind": "study_summary", "results": [], "figures": []}) == {}
    assert F.figures_for({"kind": "logit_lens_tokens", **tokens_result()}).keys() == {"tokens"}
    assert F.figures_for(layers_result()).keys() == {"layers"}
    by_behavior = eval_of({"logodds": [dict(r, behavior=b) for b in ("power", "wealth")
                                       for r in eval_result()["metrics"]["logodds"]]})
    assert set(F.figures_for(by_behavior)) == {"logodds_power", "logodds_wealth"}


def _write_results(root):
    root.mkdir()
    (root / "eval").mkdir()
    (root / "eval" / "power.json").write_text(json.dumps(eval_result()))
    (root / "sweep.json").write_text(json.dumps({"kind": "sweep", "rows": sweep_result("bipo")["rows"]
                                                 + sweep_result("caa")["rows"]}))
    (root / "cosine.json").write_text(json.dumps(cosine_result()))
    (root / "lens_tokens.json").write_text(json.dumps(tokens_result()))
    (root / "lens_layers.json").write_text(json.dumps(layers_result()))
    (root / "composition.json").write_text(json.dumps(composition_result()))
    (root / "transfer.json").write_text(json.dumps(transfer_model_result()))
    (root / "transfer_layers.json").write_text(json.dumps(transfer_layers_result()))
    (root / "vec").mkdir()
    (root / "vec" / "history.json").write_text(json.dumps(history()))
    (root / "vec" / "vector.json").write_text(json.dumps({"hook_name": "blocks.1.hook_resid_post", "method": "bipo"}))
    (root / "broken.json").write_text("{not json")
    (root / "other.json").write_text(json.dumps({"kind": "unknown-kind"}))


def test_figures_command_draws_every_result(tmp_path, capsys):
    results, out = tmp_path / "results", tmp_path / "figures"
    _write_results(results)
    assert main(["figures", "--results", str(results), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    stems = sorted({n.rsplit(".", 1)[0] for n in names})
    assert stems == sorted([
        "composition__bars", "cosine__heatmap", "eval_power__ab", "eval_power__logodds", "lens_layers__layers",
        "lens_tokens__tokens", "sweep__layers", "transfer__effect", "transfer_layers__effect", "vec_history__training"])
    assert len(names) == 2 * len(stems)
    assert all((out / n).stat().st_size > 1000 for n in names)
    assert "wrote 10 figure(s), 20 file(s)" in capsys.readouterr().out


def test_figures_command_errors(tmp_path, capsys):
    assert main(["figures", "--results", str(tmp_path / "nope"), "--out", str(tmp_path / "f")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["figures", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "f")]) == 2
    assert "no result JSON" in capsys.readouterr().err


def test_eval_normalizations_are_separate_curves():
    rows = eval_result()["metrics"]["logodds"]
    both = [dict(r, normalization="sum") for r in rows] + [dict(r, normalization="per_token", mean=r["mean"] / 4)
                                                          for r in rows]
    fig = P.plot_multiplier_curves(eval_of({"logodds": both}))
    lines = [ln for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")]
    assert len(lines) == 2 and list(lines[0].get_ydata()) == list(MULTS)  # only the summed log-odds
    assert set(F.figures_for(eval_of({"logodds": both}))) == {"logodds", "logodds_per_token"}
    with pytest.raises(P.ResultFormatError, match="normalization 'mean'"):
        P.plot_multiplier_curves(both, normalization="mean")


def test_plot_dispatches_on_kind_alone():
    assert P.plot(eval_result()).axes[0].get_xlabel() == "multiplier m"
    assert len(P.plot(eval_result(), metric="ab").axes[0].collections) == 0  # ab rows carry no interval
    assert P.plot(transfer_model_result()).axes[0].get_legend() is not None  # v1 kind "transfer" migrated
    assert len(P.plot(cosine_result()).axes[0].texts) == 9
    assert set(P.PLOTS) | {"study_summary"} == set(R.SCHEMAS)
    with pytest.raises(R.ResultFormatError, match="unknown result kind 'similarity'"):
        P.plot({"kind": "similarity", "rows": []})  # an old alias is not read
    with pytest.raises(R.ResultFormatError, match="not a DataFrame"):
        P.plot(pd.DataFrame({"multiplier": [0.0], "mean": [1.0]}))
    with pytest.raises(R.ResultFormatError, match="has no figure"):
        P.plot({"kind": "study_summary", "results": [], "figures": []})
