"""The figures of a directory of results (workbench.viz.figures, `workbench figures`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from viz_results import (
    composition_result,
    cosine_result,
    eval_of,
    eval_result,
    history,
    layers_result,
    no_pyplot_leaks,
    sweep_result,
    tokens_result,
    transfer_layers_result,
    transfer_model_v1,
)

from workbench.cli.main import main
from workbench.core import results as R
from workbench.viz import figures as F

assert no_pyplot_leaks  # autouse: no figure may be left in pyplot's list


def test_figures_for_kinds():
    assert set(F.figures_for(eval_result())) == {"logodds", "ab"}  # utility has no multiplier column
    assert set(F.figures_for(history())) == {"training"}
    with pytest.raises(R.ResultFormatError, match="unknown result kind 'something_else'"):
        F.figures_for({"kind": "something_else", "rows": []})
    assert F.figures_for({"kind": "study_summary", "results": [], "figures": []}) == {}
    assert F.figures_for(tokens_result()).keys() == {"tokens"}
    assert F.figures_for(layers_result()).keys() == {"layers"}
    assert set(F.SUFFIX) | set(F.SPLIT) | {R.STUDY_SUMMARY} == set(R.SCHEMAS)


def test_eval_figures_split_by_behavior_normalization_and_measure():
    by_behavior = eval_of({"logodds": [dict(r, behavior=b) for b in ("power", "wealth")
                                       for r in eval_result()["metrics"]["logodds"]]})
    figs = F.figures_for(by_behavior)
    assert set(figs) == {"logodds_power", "logodds_wealth"}
    assert figs["logodds_wealth"].axes[0].get_title() == "wealth"
    rows = eval_result()["metrics"]["logodds"]
    both = [dict(r, normalization="sum") for r in rows] + [dict(r, normalization="per_token", mean=r["mean"] / 4)
                                                          for r in rows]
    figs = F.figures_for(eval_of({"logodds": both}))
    assert set(figs) == {"logodds", "logodds_per_token"}
    line = figs["logodds_per_token"].axes[0].get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), [m / 4 for m in (-2, -1, 0, 1, 2)])
    utility = [{"vector": "bipo", "multiplier": m, "measure": k, "mean": v + m} for m in (-1.0, 1.0)
               for k, v in (("perplexity", 10.0), ("kl_from_unsteered", 0.0))]
    figs = F.figures_for(eval_of({"utility": utility}))
    assert set(figs) == {"utility_perplexity", "utility_kl_from_unsteered"}
    assert figs["utility_kl_from_unsteered"].axes[0].get_ylabel().startswith("KL(unsteered ‖ steered)")


def test_sweep_figures_one_per_behavior():
    rows = [dict(r, behavior=b) for b in ("power", "wealth") for r in sweep_result("caa")["rows"]]
    figs = F.figures_for(R.result(R.SWEEP, method="caa", rows=rows))
    assert set(figs) == {"layers_power", "layers_wealth"}
    assert len([ln for ln in figs["layers_power"].axes[0].get_lines() if not ln.get_label().startswith("_")]) == 2


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
    (root / "transfer.json").write_text(json.dumps(transfer_model_v1()))
    (root / "transfer_layers.json").write_text(json.dumps(transfer_layers_result()))
    (root / "vec").mkdir()
    (root / "vec" / "history.json").write_text(json.dumps(history()))
    (root / "vec" / "vector.json").write_text(json.dumps({"hook_name": "blocks.1.hook_resid_post", "method": "bipo"}))
    (root / "broken.json").write_text("{not json")
    (root / "other.json").write_text(json.dumps({"kind": "unknown-kind"}))


STEMS = sorted(["composition__bars", "cosine__heatmap", "eval_power__ab", "eval_power__logodds", "lens_layers__layers",
                "lens_tokens__tokens", "sweep__layers", "transfer__effect", "transfer_layers__effect",
                "vec_history__training"])


def test_write_figures_draws_every_result(tmp_path):
    _write_results(tmp_path / "results")
    written = F.write_figures(tmp_path / "results", tmp_path / "out", formats=("png",))
    assert sorted(p.stem for p in written) == STEMS and all(p.suffix == ".png" for p in written)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        F.write_figures(tmp_path / "missing", tmp_path / "out")


def test_figures_command_draws_every_result(tmp_path, capsys):
    results, out = tmp_path / "results", tmp_path / "figures"
    _write_results(results)
    # broken.json and other.json are skipped: the rest is drawn, one warning each, exit code 3 (issue #30)
    assert main(["figures", "--results", str(results), "--out", str(out)]) == 3
    names = sorted(p.name for p in out.iterdir())
    assert sorted({n.rsplit(".", 1)[0] for n in names}) == STEMS
    assert len(names) == 2 * len(STEMS)
    assert all((out / n).stat().st_size > 1000 for n in names)
    captured = capsys.readouterr()
    assert "wrote 10 figure(s), 20 file(s)" in captured.out
    warnings = captured.err.splitlines()
    assert len(warnings) == 2 and all(w.startswith("workbench figures: warning: ") for w in warnings), warnings
    assert "broken.json: not valid JSON" in warnings[0] and "other.json: unknown result kind" in warnings[1]
    (results / "broken.json").unlink()
    (results / "other.json").unlink()
    assert main(["figures", "--results", str(results), "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""


def test_figures_command_errors(tmp_path, capsys):
    assert main(["figures", "--results", str(tmp_path / "nope"), "--out", str(tmp_path / "f")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["figures", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "f")]) == 2
    assert "no result JSON" in capsys.readouterr().err
    (tmp_path / "empty" / "broken.json").write_text("{")  # nothing readable: exit 2, one line naming the file
    assert main(["figures", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "no result could be read: " in err[0] and "broken.json: not valid JSON" in err[0]
