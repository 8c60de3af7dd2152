"""The ``workbench`` command: info, train, eval, sweep, figures, convert, demo, reproduce, report, refusal, compare
(``workbench.cli.parser``). ``main`` runs one; any error becomes one line ``workbench CMD: error: ...``, exit code 2
for a user error and 1 for an internal one, the traceback only with ``-v``."""

from __future__ import annotations

import errno
import logging
import re
import sys
import traceback
from collections.abc import Sequence

from workbench.cli.common import CLIError
from workbench.cli.parser import build_parser

#: library argument -> the flag that sets it: library errors name the argument (``layers=``), the CLI the flag
ARGUMENT_FLAGS = {"layers": "--layers", "multipliers": "--multipliers", "key": "--key", "layer": "--layer",
                  "pairs": "--data / --behavior", "ab_pairs": "--ab-from-text", "truthfulqa": "--truthfulqa",
                  "refusal_prompts": "--refusal-csv", "allow_empty_question": "--allow-empty-question",
                  "results_dir": "--results", "max_length": "--max-length", "budgets": "--budgets", "cost": "--cost",
                  "batch_size": "--batch-size"}
_ARGUMENT = re.compile(r"(?<![\w.])(" + "|".join(ARGUMENT_FLAGS) + r")=(True\b|\.\.\.|[^\s,;:)]*)")


_OS_ERRORS = {IsADirectoryError: "is a directory", NotADirectoryError: "a part of the path is not a directory",
              FileExistsError: "already exists", PermissionError: "permission denied"}


def as_flags(message: str) -> str:
    """A library message with each ``argument=value`` it names written as the CLI flag (``layers='0-99'``
    -> ``--layers '0-99'``; ``allow_empty_question=True`` -> ``--allow-empty-question``)."""
    def flag(m: re.Match) -> str:
        value = m.group(2)
        return ARGUMENT_FLAGS[m.group(1)] + ("" if value in ("", "True", "...") else f" {value}")

    return _ARGUMENT.sub(flag, message)


def _describe_exception(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit code for an exception that reached main (2: user error, 1: internal)."""
    # not imported here (no torch for --help): a RunError is worded with flags already; an ArtifactBusyError
    # names the other writer of the output
    worded = [getattr(sys.modules.get(m), n, ()) for m, n in (("workbench.studies.runs", "RunError"),
                                                              ("workbench.core.artifacts", "ArtifactBusyError"))]
    if isinstance(exc, (CLIError, *worded)):
        return str(exc), 2
    if isinstance(exc, ValueError | FileNotFoundError):
        return as_flags(str(exc)), 2
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            return f"{where}no space left on device", 2
        said = next((text for cls, text in _OS_ERRORS.items() if isinstance(exc, cls)), exc.strerror or exc)
        return f"{where}{said}", 2  # the last: e.g. the hub unreachable offline
    if isinstance(exc, MemoryError):
        return "out of memory", 1
    return f"internal error ({type(exc).__name__}: {exc}); rerun with -v for the traceback", 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``workbench`` command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"workbench {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: one line, the traceback only with -v
        message, code = _describe_exception(exc)
        if args.verbose:
            traceback.print_exc()
        print(f"workbench {args.command}: error: {' '.join(message.split())}", file=sys.stderr)
        return code


__all__ = ["ARGUMENT_FLAGS", "as_flags", "build_parser", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
