"""What the command modules share: number flags, run configs built from the flags, the status printer. No torch
here: the library is imported inside each command function, so that ``workbench --help`` stays fast."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def numbers(flag: str, values: Sequence[str] | None) -> list[float] | None:
    """``--multipliers``/``--budgets`` as floats (None when not given); a non-number is a CLIError."""
    if values is None:
        return None
    out = []
    for v in values:
        try:
            out.append(float(v))
        except ValueError:
            raise CLIError(f"{flag}: {v!r} is not a number") from None
    return out


def config(cls: type, args: argparse.Namespace, **given: Any) -> Any:
    """The run config ``cls`` of the flags in ``args`` (a flag left at None takes the config's default)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{k: v for k, v in (values | given).items() if v is not None})


def echo(command: str, stream: Any = None) -> Callable[[str], None]:
    """A run's ``log``: each status line on stderr (or ``stream``); a warning as ``workbench CMD: warning: ...``."""
    def log(line: str) -> None:
        print(f"workbench {command}: {line}" if line.startswith("warning: ") else line,
              file=stream or sys.stderr, flush=True)
    return log


def headless() -> None:
    """Draw figures without a display: the Agg backend, chosen before the library imports pyplot."""
    import matplotlib  # lazy: not needed for --help

    matplotlib.use("Agg")
