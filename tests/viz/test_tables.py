"""Reading results for figures and reports (workbench.viz.tables)."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
from viz_results import cosine_result, eval_result, history, sweep_result

from workbench.core import results as R
from workbench.viz import tables as T


def test_read_result_checks_schema_and_kind():
    res = T.read_result(dict(sweep_result()), (R.SWEEP,), "plot_x")
    assert isinstance(res, R.Result) and res.kind == R.SWEEP
    with pytest.raises(R.ResultFormatError, match="plot_x draws a sweep or cosine result, not a eval result"):
        T.read_result(eval_result(), (R.SWEEP, R.COSINE), "plot_x")
    with pytest.raises(R.ResultFormatError, match="plot_x draws a sweep result, not a list"):
        T.read_result([], (R.SWEEP,), "plot_x")
    with pytest.raises(R.ResultFormatError, match="sweep result lacks 'rows'"):
        T.read_result({"kind": "sweep"}, (R.SWEEP,), "plot_x")


def test_main_table_and_columns():
    df = T.main_table(R.from_dict(eval_result()), "ab")
    assert list(df.columns) == ["vector", "multiplier", "mean"] and len(df) == 10
    with pytest.raises(R.ResultFormatError, match="the sweep result has no rows"):
        T.main_table(R.result(R.SWEEP, rows=[]))
    with pytest.raises(R.ResultFormatError, match=r"plot_x: the result lacks column\(s\) \['b'\]"):
        T.need(df, ["vector", "b"], "plot_x")
    assert T.first(df, ("value", "mean", "vector")) == "mean" and T.first(df, ("x",)) is None


def test_label_series_uses_the_columns_that_vary():
    df = pd.DataFrame({"vector": ["a", "a", "b"], "behavior": ["p", "q", "p"], "method": ["m", "m", "m"]})
    assert T.label_series(df, ("vector", "behavior", "method")).tolist() == ["a / p", "a / q", "b / p"]
    assert T.label_series(df, ("method",)).tolist() == ["m", "m", "m"]  # none varies: the first present
    assert T.label_series(df, ("nope",)).tolist() == ["all", "all", "all"]


def test_read_result_takes_results_and_version_1_histories_only():
    assert T.read_result(dict(eval_result()), (R.EVAL,), "p").kind == R.EVAL  # a mapping loaded from JSON
    assert T.read_result(history(2), (R.BIPO_HISTORY,), "p")["history"] == history(2)  # a version-1 file
    with pytest.raises(R.ResultFormatError, match="p draws a eval result, not a DataFrame"):
        T.read_result(pd.DataFrame(eval_result()["metrics"]["ab"]), (R.EVAL,), "p")
    with pytest.raises(R.ResultFormatError, match="not a list"):
        T.read_result([{"a": 1}], (R.BIPO_HISTORY,), "p")


def test_result_files_walks_once_for_figures_and_report(tmp_path, caplog):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "cos.json").write_text(json.dumps(cosine_result()))
    (tmp_path / "history.json").write_text(json.dumps(history(2)))  # version 1: a bare list of steps
    (tmp_path / "vector.json").write_text(json.dumps({"kind": "sweep", "rows": []}))  # vector metadata: skipped
    (tmp_path / ".hidden.json").write_text(json.dumps(cosine_result()))
    (tmp_path / "notes.json").write_text(json.dumps({"something": "else"}))
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "future.json").write_text(json.dumps({**cosine_result(), "schema_version": 99}))
    with caplog.at_level(logging.WARNING):
        found = [(p.relative_to(tmp_path).as_posix(), r.kind) for p, r in T.result_files(tmp_path)]
    assert found == [("a/cos.json", "cosine"), ("history.json", "bipo_history")]
    assert "broken.json: not valid JSON" in caplog.text and "future.json" in caplog.text
    with pytest.raises(FileNotFoundError, match="no such directory"):
        list(T.result_files(tmp_path / "missing"))
