"""The command modules (``workbench.cli.train``, ``evaluate``, ``study``, ``files``) and their shared helpers
(``workbench.cli.common``): each command builds its run config from the flags, calls one run function and
prints its result."""

import argparse
import io
import sys

import pandas as pd
import pytest

import workbench.studies.run_evaluate as run_evaluate
import workbench.studies.run_files as run_files
import workbench.studies.run_studies as run_studies
import workbench.studies.run_train as run_train
from workbench.analysis.sweep import SweepResult
from workbench.cli import common
from workbench.cli.main import main
from workbench.evaluate.statistics import DEFAULT_MULTIPLIERS


def _record(monkeypatch, module, name, returns):
    """Replace ``module.name`` by a recorder of its config; returns the list of calls."""
    calls = []

    def fake(config, *args, **kw):
        calls.append((config, args, kw))
        return returns

    monkeypatch.setattr(module, name, fake)
    return calls


def test_numbers_parse_and_name_the_flag():
    assert common.numbers("--multipliers", ["-1", "0.5"]) == [-1.0, 0.5]
    assert common.numbers("--multipliers", None) is None
    with pytest.raises(common.CLIError, match=r"^--budgets: 'x' is not a number$"):
        common.numbers("--budgets", ["1", "x"])


def test_config_takes_the_flags_and_leaves_none_to_the_config():
    args = argparse.Namespace(vector=["v"], out="r.json", limit=None, multipliers=None, func=print, verbose=True)
    config = common.config(run_evaluate.EvalRun, args)
    assert config.vector == ["v"] and config.out == "r.json" and config.limit is None
    assert tuple(config.multipliers) == DEFAULT_MULTIPLIERS  # the library's default, not a copy of it
    assert common.config(run_evaluate.EvalRun, args, multipliers=[1.0]).multipliers == [1.0]


def test_echo_prefixes_warnings_with_the_command(capsys):
    log = common.echo("train")
    log("train: BiPO on 4 pairs")
    log("warning: 1 pair(s) have an answer over 2048 characters")
    assert capsys.readouterr().err.splitlines() == ["train: BiPO on 4 pairs",
                                                    "workbench train: warning: 1 pair(s) have an answer over "
                                                    "2048 characters"]
    out = io.StringIO()
    common.echo("reproduce", out)("stage eval done")
    assert out.getvalue() == "stage eval done\n"


def test_train_calls_train_run_once(monkeypatch):
    calls = _record(monkeypatch, run_train, "train_run", (None, None))
    assert main(["train", "--method", "caa", "--behavior", "power-seeking", "--layer", "3", "--seed", "7",
                 "--out", "o"]) == 0
    [(config, _, kw)] = calls
    assert (config.method, config.behavior, config.layer, config.seed) == ("caa", "power-seeking", 3, 7)
    assert config.out == "o"
    assert config.epochs is None and config.split == "train" and callable(kw["log"])


def test_eval_parses_multipliers_and_prints_the_tables(monkeypatch, capsys):
    calls = _record(monkeypatch, run_evaluate, "evaluate_run", {"kind": "eval"})
    monkeypatch.setattr("workbench.evaluate.suite.format_eval", lambda result: f"TABLES of {result['kind']}")
    assert main(["eval", "--vector", "a", "--vector", "b", "--behavior", "power-seeking", "--multipliers", "-1", "1",
                 "--metrics", "logodds", "--out", "r.json"]) == 0
    [(config, _, _)] = calls
    assert config.vector == ["a", "b"] and config.multipliers == [-1.0, 1.0] and config.metrics == ["logodds"]
    assert capsys.readouterr().out == "TABLES of eval\n"
    assert main(["eval", "--vector", "a", "--multipliers", "1", "x", "--out", "r.json"]) == 2
    assert "--multipliers: 'x' is not a number" in capsys.readouterr().err and len(calls) == 1


def test_compare_and_refusal_print_their_tables(monkeypatch, capsys):
    cmp_calls = _record(monkeypatch, run_evaluate, "compare_run", {"kind": "matched_cost"})
    monkeypatch.setattr(run_evaluate, "format_compare", lambda r: "CMP")
    assert main(["compare", "--vector", "a", "--behavior", "b", "--budgets", "0.1", "--out", "c.json"]) == 0
    assert cmp_calls[0][0].budgets == [0.1] and cmp_calls[0][0].split == "test"
    captured = capsys.readouterr()
    assert captured.out == "CMP\n" and captured.err == "wrote c.json\n"
    ref_calls = _record(monkeypatch, run_evaluate, "refusal_run", {"kind": "refusal"})
    monkeypatch.setattr(run_evaluate, "format_refusal", lambda r: "REF")
    assert main(["refusal", "--vector", "a", "--templates", "none", "--out", "r.json"]) == 0
    assert ref_calls[0][0].templates == "none" and ref_calls[0][0].format == "advbench"
    assert capsys.readouterr().out == "REF\nwrote r.json\n"


def test_study_commands(monkeypatch, capsys):
    swept = SweepResult(pd.DataFrame({"layer": [1]}))
    sweep_calls = _record(monkeypatch, run_studies, "sweep_run", ({}, swept))
    monkeypatch.setattr("workbench.analysis.sweep.format_sweep", lambda t: f"SWEEP {list(t.table()['layer'])}")
    assert main(["sweep", "--behavior", "b", "--layers", "1", "--out", "s.json"]) == 0
    assert sweep_calls[0][0].multipliers == (-1.0, 1.0) and sweep_calls[0][0].test_fraction is None  # 0.2 of --data
    assert capsys.readouterr().out == "SWEEP [1]\n"
    _record(monkeypatch, run_studies, "sweep_run", ({}, None))  # as cells: no table
    assert main(["sweep", "--behavior", "b", "--out", "s.json"]) == 0 and capsys.readouterr().out == ""
    repro = _record(monkeypatch, run_studies, "reproduce_run", {"results": ["a"], "figures": [], "seconds": 2.0})
    assert main(["reproduce", "--quick", "--out", "R", "--figures", "F"]) == 0
    assert repro[0][0].quick and repro[0][0].out == "R"
    assert capsys.readouterr().out == "1 result file(s) in R, 0 figure file(s) in F; 2 s\n"


def test_file_commands(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(run_files, "info_run", lambda config: [f"model {config.model}", "hooks"])
    assert main(["info", "--model", "m"]) == 0 and capsys.readouterr().out == "model m\nhooks\n"
    skipped = []
    monkeypatch.setattr(run_files, "report_run", lambda results, out, kind, log: (f"# {results} {kind}\n", skipped))
    assert main(["report", "--results", "R", "--kind", "eval"]) == 0
    assert capsys.readouterr().out == "# R ['eval']\n"
    written = [tmp_path / "a.png", tmp_path / "a.pdf", tmp_path / "b.png"]
    monkeypatch.setattr(run_files, "figures_run", lambda results, out, formats, log: (written, skipped))
    assert main(["figures", "--results", "R", "--out", "F"]) == 0
    assert capsys.readouterr().out == "wrote 2 figure(s), 3 file(s) to F\n"
    skipped.append((tmp_path / "bad.json", "not valid JSON"))  # done, but something skipped: exit code 3
    assert main(["figures", "--results", "R", "--out", "F"]) == 3 == main(["report", "--results", "R"])


def test_figures_and_report_help_gives_the_exit_codes(capsys):
    for command in ("figures", "report"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "3 done, but a result was skipped" in " ".join(capsys.readouterr().out.split())


def test_help_imports_no_library(monkeypatch):
    """The command modules import the library only when a command runs."""
    for name in ("workbench.cli.train", "workbench.cli.evaluate", "workbench.cli.study", "workbench.cli.files"):
        source = open(sys.modules[name].__file__).read()
        top = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
        assert not [line for line in top if "workbench.studies" in line or "torch" in line], name
