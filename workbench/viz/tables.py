"""Reading results for figures and reports (the schema of ``workbench.core.results``).

Plotting reads only results: every ``plot_*`` takes a :class:`~workbench.core.results.Result` (or the
same mapping loaded from JSON), checks it with ``from_dict`` and that its ``kind`` is one the figure
draws, and reads its tables as DataFrames (``Result.table``). The helpers here name the plot in
every error, so a wrong input fails with one line that says what was expected. ``result_files``
walks a results directory once for both the figures command and the report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.core import results
from workbench.core.results import Result, ResultFormatError

logger = logging.getLogger(__name__)


#: what reading or drawing a malformed result raises (a missing key, a value of the wrong type or shape)
MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError)


def why(exc: BaseException) -> str:
    """An exception as a short reason: ``KeyError: 'budget'``."""
    return f"{type(exc).__name__}: {exc}"


#: called with a result file that is skipped and why (``result_files``, ``report``, ``write_figures``)
OnSkip = Callable[[Path, str], None]


def log_skip(path: Path, reason: str) -> None:
    """The default ``OnSkip``: one warning in the log."""
    logger.warning("%s: %s; skipped", path, reason)


def result_files(results_dir: str | Path, on_skip: OnSkip | None = None) -> Iterator[tuple[Path, Result]]:
    """``(path, result)`` of every result JSON under ``results_dir``, recursively, sorted by path.

    Result files are JSON with a ``"kind"`` (and version-1 BiPO ``history.json`` files;
    ``results.is_result``), each read through ``from_dict``; vector metadata (``vector.json``), hidden
    files and other JSON are passed over silently, and a file that cannot be read, is not valid JSON or
    not a valid result (unknown kind, newer schema) is skipped: ``on_skip(path, why)`` (default: a
    logged warning). The figures command and the report both read results here, so they skip the same
    files for the same reasons.

    Raises:
        FileNotFoundError: ``results_dir`` does not exist.
    """
    on_skip = on_skip or log_skip
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results_dir={str(root)!r}: no such directory")
    for path in sorted(root.rglob("*.json")):
        if path.name.startswith(".") or path.name == "vector.json":  # hidden, or a vector's metadata
            continue
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            on_skip(path, f"not valid JSON ({exc})")
            continue
        except OSError as exc:
            on_skip(path, f"cannot be read ({exc.strerror or exc})")
            continue
        if not results.is_result(obj):
            continue
        try:
            res = results.from_dict(obj)
        except ResultFormatError as exc:
            on_skip(path, str(exc))
            continue
        except MALFORMED as exc:  # a schema check tripped by a value of the wrong type
            on_skip(path, why(exc))
            continue
        yield path, res


def read_result(result: Any, kinds: Sequence[str], plot: str) -> Result:
    """``result`` checked against its schema (``from_dict``) and against the kinds ``plot`` draws.

    ``result`` is a result, the mapping loaded from its JSON, or a version-1 BiPO history file (a bare
    list of step records, ``results.is_result``); anything else (a DataFrame, an analysis object) is an
    error: analyses return results, and plotting reads only results.

    Raises:
        ResultFormatError: not a result, not a valid one, or a kind not in ``kinds``.
    """
    wanted = " or ".join(kinds)
    if not (isinstance(result, Mapping) or (isinstance(result, list) and results.is_result(result))):
        raise ResultFormatError(f"{plot} draws a {wanted} result, not a {type(result).__name__}")
    res = results.from_dict(result)
    if res.kind not in kinds:
        raise ResultFormatError(f"{plot} draws a {wanted} result, not a {res.kind} result")
    return res


def main_table(res: Result, name: str | None = None) -> pd.DataFrame:
    """One table of a result (default: its main one) as a DataFrame.

    Raises:
        ResultFormatError: the result has no such table, or the table has no rows.
    """
    df = res.table(name)
    if df.empty:
        raise ResultFormatError(f"the {res.kind} result has no rows" + (f" in {name!r}" if name else ""))
    return df


def need(df: pd.DataFrame, columns: Iterable[str], plot: str) -> None:
    """Raise a one-line ``ResultFormatError`` naming ``plot`` when ``df`` lacks any of ``columns``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ResultFormatError(f"{plot}: the result lacks column(s) {missing}; it has {list(df.columns)}")


def first(df: pd.DataFrame, candidates: Sequence[str]) -> str | None:
    """The first of ``candidates`` that is a column of ``df``, or None."""
    return next((c for c in candidates if c in df.columns), None)


def label_series(df: pd.DataFrame, candidates: Sequence[str]) -> pd.Series:
    """A label per row from the first present columns among ``candidates`` that vary (joined by ' / ')."""
    present = [c for c in candidates if c in df.columns]
    varying = [c for c in present if df[c].nunique(dropna=False) > 1]
    cols = varying or present[:1]
    if not cols:
        return pd.Series(["all"] * len(df), index=df.index)
    return df[cols].astype(str).agg(" / ".join, axis=1)


__all__ = ["MALFORMED", "OnSkip", "first", "label_series", "log_skip", "main_table", "need", "read_result", "result_files", "why"]
