"""``workbench.cli.main``: one command per call, errors as one line with the right exit code."""

import subprocess
import sys

from workbench.cli import files
from workbench.cli import main as cli
from workbench.studies.runs import RunError


def _fail_with(monkeypatch, exc):
    def boom(args):
        raise exc
    monkeypatch.setattr(files, "run_info", boom)


def test_a_run_error_is_printed_as_it_is(monkeypatch, capsys):
    """A RunError is already worded with flags: ``layer=3`` in it is not rewritten as ``--layer 3``."""
    _fail_with(monkeypatch, RunError("BiPOConfig.layer=3 and layer=3 are   spaced\nout"))
    assert cli.main(["info"]) == 2
    assert capsys.readouterr().err == "workbench info: error: BiPOConfig.layer=3 and layer=3 are spaced out\n"
    _fail_with(monkeypatch, ValueError("layer=3 is out of range"))
    assert cli.main(["info"]) == 2
    assert capsys.readouterr().err == "workbench info: error: --layer 3 is out of range\n"


def test_interrupt_and_memory(monkeypatch, capsys):
    _fail_with(monkeypatch, KeyboardInterrupt())
    assert cli.main(["info"]) == 130 and capsys.readouterr().err == "workbench info: interrupted\n"
    _fail_with(monkeypatch, MemoryError())
    assert cli.main(["info"]) == 1 and capsys.readouterr().err == "workbench info: error: out of memory\n"


def test_no_command_prints_the_help(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: workbench") and all(c in out for c in ("train", "compare", "reproduce"))


def test_python_dash_m_runs_main():
    r = subprocess.run([sys.executable, "-m", "workbench", "report", "--results", "/nonexistent/dir"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr == "workbench report: error: --results /nonexistent/dir: no such directory\n"
