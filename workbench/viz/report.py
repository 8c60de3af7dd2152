"""Markdown tables of saved results: the numbers behind the figures, for notes and papers.

``report(results_dir)`` reads every result JSON under a directory (the files ``workbench eval``,
``workbench sweep`` and ``workbench reproduce`` write, found by their ``"kind"``) and returns one
markdown section per file: log-odds curves with their bootstrap intervals and win rates, utility per
multiplier, layer sweeps, cosine matrices, logit-lens tokens, composition and transfer tables.
Nothing is recomputed: each file is read through the result schema (``workbench.core.results.from_dict``)
and its tables as DataFrames (``Result.table``), as ``workbench.viz.figures`` reads them for figures.
``workbench report --results DIR`` prints it. Steering vectors: BiPO, Cao et al. 2024 (arXiv 2406.00045);
CAA, Rimsky et al. 2023 (arXiv 2312.06681).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.analysis.equal_cost import cost_effect_table, headline_table
from workbench.core import results as R
from workbench.core.results import Result
from workbench.evaluate.prompting import prompting_table
from workbench.viz.tables import MALFORMED, OnSkip, log_skip, result_files, why

logger = logging.getLogger(__name__)


def markdown_table(df: pd.DataFrame, digits: int = 3, index: bool = False) -> str:
    """A GitHub markdown table of ``df`` (floats rounded to ``digits``; no extra dependency)."""
    if index:
        df = df.reset_index()

    def cell(x: Any) -> str:
        if isinstance(x, float):
            return "" if pd.isna(x) else f"{x:.{digits}f}"
        return str(x).replace("|", "\\|").replace("\n", " ")

    head = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _interval(df: pd.DataFrame, digits: int = 2) -> pd.Series:
    return df.apply(lambda r: f"{r['mean']:+.{digits}f} [{r['ci_low']:+.{digits}f}, {r['ci_high']:+.{digits}f}]",
                    axis=1)


def _pct(row: pd.Series, key: str) -> str:
    """``"12% [5%, 20%]"`` of a share column and its interval (empty when the row lacks it)."""
    if key not in row or pd.isna(row[key]):
        return ""
    lo, hi = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    return f"{row[key]:.0%}" + (f" [{lo:.0%}, {hi:.0%}]" if lo is not None and pd.notna(lo) else "")


def steerability_table(df: pd.DataFrame) -> pd.DataFrame:
    """An eval result's ``steerability`` table as report rows: one per vector, shares as percentages
    with their 95 % intervals (older results without the intervals or the moved shares give what they have)."""
    out = pd.DataFrame({"vector": df["vector"], "pairs": df["n"].astype(int),
                        "mean slope [95 % CI]": _interval(df)})
    out["anti-steerable [95 % CI]"] = [_pct(r, "anti_steerable") for _, r in df.iterrows()]
    for side in ("plus", "minus"):
        if f"moved_{side}" in df:
            out[f"moved > 1 nat ({'m > 0' if side == 'plus' else 'm < 0'})"] = [
                (f"{_pct(r, f'moved_{side}')} at m = {r[f'm_{side}']:+g}" if pd.notna(r.get(f"m_{side}")) else "")
                for _, r in df.iterrows()]
    return out


def steerability_section(df: pd.DataFrame) -> str:
    """The markdown paragraph of an eval result's per-example steerability (Tan et al. 2024)."""
    return ("Per-example steerability (least-squares slope of each pair's log-odds in m; anti-steerable: slope "
            "< 0; moved: log-odds shift beyond 1 nat in m's direction at the largest |m| of each sign):\n\n"
            + markdown_table(steerability_table(df)))


def _eval(result: Result) -> str:
    metrics = result.tables
    parts = []
    if "logodds" in metrics:
        df = result.table("logodds")
        if "normalization" in df:
            df = df[df.normalization == "sum"]
        df = df.assign(logodds=_interval(df))
        cols = {"logodds": "mean log-odds [95 % CI]"} | ({"win_rate": "win rate"} if "win_rate" in df else {})
        wide = df.pivot(index="multiplier", columns="vector", values=list(cols))
        wide.columns = [f"{v}: {cols[c]}" for c, v in wide.columns]
        parts.append(f"Held-out log p(matching) - log p(not matching), n = {int(df['n'].iloc[0])}:\n\n"
                     + markdown_table(wide, index=True))
    if "steerability" in metrics and not result.table("steerability").empty:
        parts.append(steerability_section(result.table("steerability")))
    measures = [k for k in ("perplexity", "top1_agreement", "kl_from_unsteered") if k in metrics]
    if "utility" in metrics:
        df = result.table("utility")
    elif measures:  # one metric per measure: stacked with a `measure` column
        df = pd.concat([result.table(k).assign(measure=k) for k in measures], ignore_index=True)
    else:
        df = pd.DataFrame()
    if not df.empty:
        wide = df.pivot(index="multiplier", columns=["vector", "measure"], values="mean")
        wide.columns = [f"{v}: {m}" for v, m in wide.columns]
        parts.append("Utility on neutral text (perplexity, top-1 agreement with the unsteered model, KL):\n\n"
                     + markdown_table(wide, index=True))
    for name in ("ab", "mc1", "mc2", "open", "refusal"):
        if name in metrics and not result.table(name).empty:
            parts.append(f"`{name}`:\n\n" + markdown_table(result.table(name)))
    for name, rows in (result.get("validation") or {}).items():
        if rows:
            parts.append(f"Validation of the {name.replace('_', ' ')}:\n\n" + markdown_table(pd.DataFrame(rows)))
    return "\n\n".join(parts)


def _rows(result: Result, drop: tuple[str, ...] = ()) -> str:
    df = result.table()
    return markdown_table(df.drop(columns=[c for c in drop if c in df]))


def _cosine(result: Result) -> str:
    return markdown_table(result.table(), index=True)


def _tokens(result: Result) -> str:
    df = result.table()
    df = df.assign(entry=df.apply(lambda r: f"`{r['token']!r}` {r['logit_change']:+.2f}", axis=1))
    keys = [c for c in ("vector", "method", "direction") if c in df]
    wide = df.pivot(index="rank", columns=keys, values="entry")
    wide.columns = [" ".join(str(x) for x in c) if isinstance(c, tuple) else str(c) for c in wide.columns]
    return markdown_table(wide, index=True)


def _lens_layers(result: Result) -> str:
    df = result.table()
    if "steered" in df:
        df = df[df.steered.astype(bool)].drop(columns="steered")
    return markdown_table(df.drop(columns=[c for c in ("hook_name",) if c in df]))


def _matched_cost(result: Result) -> str:
    cost = "KL from the unsteered model per token" if result.get("cost") == "kl" else "perplexity ratio - 1"
    norm = (result.get("equal_norm") or {}).get("mode")
    head = (f"Held-out log-odds shift from m = 0 where the cost ({cost}) reaches each budget, n = "
            f"{result.get('n_pairs')} pairs, {result.get('n_texts')} neutral passages"
            + (f", equal norm ({norm})" if norm else "") + ":")
    parts = [head, markdown_table(cost_effect_table(result))]
    if result.get("slopes"):
        parts.append("Slope near m = 0 (effect / sqrt(KL)):\n\n" + markdown_table(result.table("slopes"), digits=5))
    asked = prompting_section(result)
    if asked:
        parts.append(asked)
    return "\n\n".join(parts)


def prompting_section(result: Mapping[str, Any]) -> str:
    """The prompting rows of a ``compare --prompting`` result as a markdown table ("" without them)."""
    rows = result.get("prompting_rows")
    if not rows:
        return ""
    asked = R.result(R.PROMPTING, rows=rows, instructions=(result.get("prompting") or {}).get("instructions") or {})
    return ("Asking instead of steering (an instruction, k shots, and instruction + vector; cost and effect on the "
            "same passages and pairs):\n\n" + markdown_table(prompting_table(asked)))


def _entanglement(result: Result) -> str:
    df = result.table()
    mults = result.get("multipliers") or {}
    wide = {}
    for value in ("normalized", "effect"):
        w = df.pivot(index="vector", columns="target", values=value)
        w = w.reindex(index=list(result.get("vectors") or w.index), columns=list(result.get("targets") or w.columns))
        w.index = [f"{v} (m = {mults[v]:+.3g})" if v in mults else v for v in w.index]
        wide[value] = w
    return ("Each vector's effect on every target divided by its on-target effect (rows: vectors; TruthfulQA MC1 in "
            "accuracy points per on-target nat):\n\n" + markdown_table(wide["normalized"], digits=2, index=True)
            + "\n\nThe effects themselves (Δ log-odds vs. m = 0; TruthfulQA MC1: Δ accuracy):\n\n"
            + markdown_table(wide["effect"], digits=2, index=True))


_SECTIONS: dict[str, Callable[[Result], str]] = {
    R.ENTANGLEMENT: _entanglement,
    R.MATCHED_COST: _matched_cost,
    R.EVAL: _eval, R.SWEEP: lambda r: _rows(r, ("hook_name",)), R.COSINE: _cosine,
    R.COSINE_METHODS: _rows, R.LOGIT_LENS_TOKENS: _tokens, R.LOGIT_LENS_LAYERS: _lens_layers,
    R.COMPOSITION: _rows, R.TRANSFER_LAYERS: _rows, R.TRANSFER_MODEL: _rows, R.REFUSAL: _rows,
    R.TRANSFER_LORA: lambda r: "\n\n".join([markdown_table(r.table("finetunes")), _rows(r)]),
}


def report(results_dir: str | Path, kinds: Sequence[str] | None = None, *, on_skip: OnSkip | None = None) -> str:
    """Markdown tables of every result JSON under ``results_dir`` (sorted by path), or of the given
    ``kinds`` only; several matched-cost results (or any, when ``kinds`` is given) also get one table side
    by side, first.

    Result files are found as ``workbench.viz.tables.result_files`` finds them (the figures command
    does the same). A result that cannot be read or tabulated is skipped, and the others are reported:
    ``on_skip(path, why)`` is called for each (default: a logged warning).

    Raises:
        FileNotFoundError: ``results_dir`` does not exist.
    """
    on_skip = on_skip or log_skip
    root = Path(results_dir)
    sections = []
    matched: dict[str, Result] = {}
    for path, result in result_files(root, on_skip):
        if result.kind not in _SECTIONS or (kinds is not None and result.kind not in kinds):
            continue
        try:
            body = _SECTIONS[result.kind](result)
            if result.kind == R.MATCHED_COST:
                headline_table({"check": result})  # a result the side-by-side table cannot read is skipped too
        except MALFORMED as exc:
            on_skip(path, f"cannot tabulate ({why(exc)})")
            continue
        if result.kind == R.MATCHED_COST:
            matched[str(path.relative_to(root).with_suffix(""))] = result
        sections.append(f"### {path.relative_to(root)}\n\n{body}")
    if len(matched) > 1 or (matched and kinds is not None):  # the matched-cost results side by side, first
        sections.insert(0, "### matched cost, every result (effect at the found multiplier; * not monotone)\n\n"
                        + markdown_table(headline_table(matched)))
    return "\n\n".join(sections) + "\n"


__all__ = ["markdown_table", "prompting_section", "report", "steerability_section", "steerability_table"]
