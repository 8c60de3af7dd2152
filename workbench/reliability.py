"""Reliability cases: bad inputs run through the real ``workbench`` command, each with the exit code and
the words its one-line error must hold (issue #19). ``scripts/reliability_table.py`` turns them into
``docs/reliability.md``; ``tests/test_cli.py`` runs each as a test. None loads a model: every case must
fail before any work starts.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

# (name, setup: {relative path: "dir" | file text}, argv with {tmp} for the case's directory,
#  expected exit code, words the message must contain)
CASES: list[tuple[str, dict[str, str], list[str], int, list[str]]] = [
    ("train --out is an existing file", {"afile": "x"},
     ["train", "--method", "caa", "--behavior", "power-seeking", "--out", "{tmp}/afile"], 2, ["--out", "afile", "is a file"]),
    ("eval --out is an existing directory", {"adir": "dir"},
     ["eval", "--vector", "{tmp}/v", "--behavior", "power-seeking", "--out", "{tmp}/adir"], 2,
     ["--out", "adir", "is a directory"]),
    ("train --data is a directory", {"adir": "dir"},
     ["train", "--method", "caa", "--data", "{tmp}/adir", "--out", "{tmp}/o"], 2, ["--data", "adir", "is a directory"]),
    ("eval --data is a directory", {"adir": "dir"},
     ["eval", "--vector", "{tmp}/v", "--data", "{tmp}/adir", "--out", "{tmp}/r.json"], 2, ["--data", "is a directory"]),
    ("train --data does not exist", {},
     ["train", "--method", "caa", "--data", "{tmp}/missing.csv", "--out", "{tmp}/o"], 2, ["--data", "missing.csv", "no such file"]),
    ("train --layer -1", {},
     ["train", "--method", "caa", "--behavior", "power-seeking", "--layer", "-1", "--out", "{tmp}/o"], 2, ["--layer", "-1"]),
    ("train --checkpoint-dir reused without --resume", {"ck/state.json": "{}"},
     ["train", "--method", "bipo", "--behavior", "power-seeking", "--checkpoint-dir", "{tmp}/ck", "--out", "{tmp}/o"], 2,
     ["--checkpoint-dir", "--resume"]),
    ("train --checkpoint-dir is a file", {"ck": "x"},
     ["train", "--method", "bipo", "--behavior", "power-seeking", "--checkpoint-dir", "{tmp}/ck", "--out", "{tmp}/o"], 2,
     ["--checkpoint-dir", "is a file"]),
    ("train --resume without --checkpoint-dir", {},
     ["train", "--method", "bipo", "--behavior", "power-seeking", "--resume", "--out", "{tmp}/o"], 2, ["--resume", "--checkpoint-dir"]),
    ("train --out under a file", {"afile": "x"},
     ["train", "--method", "caa", "--behavior", "power-seeking", "--out", "{tmp}/afile/sub"], 2, ["--out", "not a directory"]),
    ("sweep --out is an existing directory", {"adir": "dir"},
     ["sweep", "--method", "caa", "--layers", "0-1", "--behavior", "power-seeking", "--out", "{tmp}/adir"], 2,
     ["--out", "is a directory"]),
]


def prepare(tmp: Path, setup: dict[str, str]) -> None:
    """Create a case's files and directories under ``tmp``."""
    for rel, content in setup.items():
        path = tmp / rel
        if content == "dir":
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)


def run_case(tmp: Path, setup: dict[str, str], argv: list[str]) -> tuple[int, str]:
    """Run one case through ``workbench.cli.main``; returns (exit code, stderr)."""
    from workbench.cli import main

    prepare(tmp, setup)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([a.replace("{tmp}", str(tmp)) for a in argv])
    return code, err.getvalue()
