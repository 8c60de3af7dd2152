"""Markdown tables of saved results (workbench.viz.report, `workbench report`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from workbench.cli.main import main
from workbench.viz.report import markdown_table, report


def test_markdown_table_rounds_and_escapes():
    df = pd.DataFrame({"name": ["a|b", "c"], "x": [1.23456, float("nan")], "n": [3, 4]})
    assert markdown_table(df, digits=2).splitlines() == [
        "| name | x | n |", "|---|---|---|", "| a\\|b | 1.23 | 3 |", "| c |  | 4 |"]


@pytest.fixture
def results(tmp_path):
    logodds = [{"vector": v, "multiplier": m, "normalization": "sum", "n": 5, "mean": m * k,
                "ci_low": m * k - 1, "ci_high": m * k + 1, "win_rate": 0.5 + m / 4}
               for v, k in (("bipo", 3.0), ("caa", 1.0)) for m in (-1.0, 0.0, 1.0)]
    utility = [{"vector": "bipo", "multiplier": m, "measure": meas, "n": 2, "mean": val}
               for m in (-1.0, 0.0, 1.0) for meas, val in (("perplexity", 30 + abs(m)), ("top1_agreement", 1 - abs(m) / 10))]
    validation = {"open_scorer": [{"given": "full", "n": 8, "accuracy_raw": 0.875, "accuracy": 1.0}]}
    (tmp_path / "eval.json").write_text(json.dumps({"kind": "eval", "metrics": {"logodds": logodds, "utility": utility},
                                                    "validation": validation}))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "cosine.json").write_text(json.dumps({"kind": "cosine", "labels": ["a", "b"],
                                                              "matrix": [[1.0, 0.25], [0.25, 1.0]]}))
    (tmp_path / "sub" / "sweep.json").write_text(json.dumps({"kind": "sweep", "rows": [
        {"layer": 3, "method": "caa", "hook_name": "blocks.3.hook_resid_post", "effect@+1": 2.5}]}))
    (tmp_path / "notes.json").write_text(json.dumps({"something": "else"}))  # no kind: skipped
    (tmp_path / "broken.json").write_text("{")  # unreadable: skipped with a warning
    return tmp_path


def test_report_tabulates_each_result(results):
    text = report(results)
    assert text.index("### eval.json") < text.index("### sub/cosine.json") < text.index("### sub/sweep.json")
    assert "notes.json" not in text and "broken.json" not in text
    assert "| 1.000 | +3.00 [+2.00, +4.00] | +1.00 [+0.00, +2.00] | 0.750 | 0.750 |" in text
    assert "| -1.000 | 31.000 | 0.900 |" in text  # perplexity and agreement of bipo at m = -1
    assert "Validation of the open scorer" in text and "| full | 8 | 0.875 | 1.000 |" in text
    assert "| a | 1.000 | 0.250 |" in text
    assert "| 3 | caa | 2.500 |" in text and "hook_name" not in text


def test_cli_report_prints_and_writes(results, tmp_path, capsys):
    out = tmp_path / "report" / "tables.md"
    # broken.json is skipped: the rest is reported, one warning, exit code 3 (issue #30)
    assert main(["report", "--results", str(results), "--out", str(out)]) == 3
    captured = capsys.readouterr()
    assert captured.out == out.read_text() and "### sub/cosine.json" in captured.out
    assert captured.err.startswith("workbench report: warning: ") and len(captured.err.splitlines()) == 1
    assert "broken.json: not valid JSON" in captured.err
    (results / "broken.json").unlink()
    assert main(["report", "--results", str(results)]) == 0 and capsys.readouterr().err == ""
    assert main(["report", "--results", str(tmp_path / "missing")]) == 2
    assert "missing: no such directory" in capsys.readouterr().err


def test_one_bad_result_does_not_sink_the_report(tmp_path, capsys):
    """Issue #30: a malformed matched-cost result beside a good one is one warning; the good one is reported."""
    good = json.loads((Path(__file__).resolve().parents[2] / "results" / "full" / "compare_refusal.json").read_text())
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_text(json.dumps({**good, "rows": [{k: v for k, v in r.items() if k != "budget"}
                                                                    for r in good["rows"]]}))
    assert main(["report", "--results", str(tmp_path)]) == 3
    captured = capsys.readouterr()
    assert "### good.json" in captured.out and "### bad.json" not in captured.out
    assert captured.err == f"workbench report: warning: {tmp_path / 'bad.json'}: cannot tabulate (KeyError: 'budget'); " \
                           "skipped\n"
    (tmp_path / "good.json").unlink()  # only unreadable results: exit 2, as figures
    assert main(["report", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "no result could be read: " in err[0] and "bad.json: cannot tabulate" in err[0]


def test_report_other_kinds_and_kinds_filter(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from viz_results import (
        eval_of,
        layers_result,
        lora_result,
        tokens_result,
    )

    (tmp_path / "lens.json").write_text(json.dumps(layers_result()))
    (tmp_path / "lora.json").write_text(json.dumps(lora_result()))
    (tmp_path / "tokens.json").write_text(json.dumps(tokens_result(k=1)))
    util = {k: [{"vector": "bipo", "multiplier": 1.0, "n": 2, "mean": v}] for k, v in
            (("perplexity", 12.0), ("kl_from_unsteered", 0.25))}
    (tmp_path / "util.json").write_text(json.dumps(eval_of(util)))
    text = report(tmp_path)
    assert "hook_name" not in text and "| 1 | 0.000" not in text  # steered layers only, no hook names
    assert "| 2 | 0.100 | -0.100 | 0.200 | 0.300 | 0.020 | 0.500 |" in text
    assert "| 0.100 | 0.100 |" in text  # the fine-tune's KL target and measured KL
    assert "`' tokp1'` +4.00" in text and "`' toks1'` -4.00" in text
    assert "| bipo: perplexity | bipo: kl_from_unsteered |" in text and "| 1.000 | 12.000 | 0.250 |" in text  # stacked
    only = report(tmp_path, kinds=["transfer_lora", "logit_lens_tokens"])
    assert only.startswith("### lora.json") and "### tokens.json" in only and "lens.json" not in only
