"""One schema for every result workbench writes: a ``kind`` per result type and a schema version.

A result is a JSON object ``{"kind": KIND, "schema_version": SCHEMA_VERSION, ..., <tables>}`` where
each table is a list of row dicts (a tidy table: one row per observation, NaN written as null). The
kinds, what each must hold and which of its keys are tables are listed once, in ``SCHEMAS``; the
writers (``workbench.evaluate.suite``, ``layer_sweep``, ``similarity``, ``logit_lens``, ``composition``,
``transfer``, ``refusal``, ``matched_cost``, ``reproduce`` and the CLI) build results with
``result(kind, ...)``, and every reader (plotting, figures, report) goes through ``from_dict``, which
checks a result and migrates an older schema version explicitly (as SAELens versions its configs).

    >>> r = result(TRANSFER_LAYERS, rows=[{"offset": 0, "layer": 14, "multiplier": 1.0, "effect": 0.8}])
    >>> result_table(r)          # the rows as a DataFrame

Two KL divergences appear in results, in opposite directions, each named for its direction:

* ``kl_steered_unsteered`` (``logit_lens_layers``, ``workbench.analysis.logit_lens.steered_logit_lens``):
  ``KL(p_steered || p_unsteered)`` of the logit-lens distributions at one position, mean over pairs;
* ``kl_from_unsteered`` (``workbench.evaluate.utility``) and the ``kl`` of ``matched_cost``, ``refusal``
  and ``transfer_lora`` (the utility cost, and the KL of a fine-tune from its base):
  ``KL(p_unsteered || p_steered)`` per predicted token of neutral text.

Version history:

* 1 (or no ``schema_version``): files written before this module. Model transfer was kind
  ``"transfer"``; a BiPO ``history.json`` had no ``kind`` (``{"history", "epochs"}``, or a bare list of
  step records).
* 2: every result carries ``kind`` and ``schema_version``; model transfer is ``"transfer_model"``.
* 3: the KL column of ``logit_lens_layers`` is ``kl_steered_unsteered`` (it was ``kl``); the
  effect-vs-m=0 intervals of ``composition``'s ``conditions`` (and of the sweep's effects) are
  percentile-bootstrap ``effect_ci_low``/``effect_ci_high`` (a version-2 composition keeps its
  ``effect_sem``: a standard error cannot be turned into a percentile interval).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

SCHEMA_VERSION = 3

EVAL = "eval"  # workbench.evaluate.suite.evaluate_vectors: curves per metric under "metrics"
SWEEP = "sweep"  # workbench.analysis.sweep: one row per (method, layer)
COSINE = "cosine"  # workbench.analysis.similarity.cosine_table: a square matrix with labels
COSINE_METHODS = "cosine_methods"  # workbench.analysis.similarity.method_cosines: cosine per layer
LOGIT_LENS_TOKENS = "logit_lens_tokens"  # workbench.analysis.logit_lens.vector_logit_lens
LOGIT_LENS_LAYERS = "logit_lens_layers"  # workbench.analysis.logit_lens.steered_logit_lens
COMPOSITION = "composition"  # workbench.analysis.composition.composition_table
TRANSFER_LAYERS = "transfer_layers"  # workbench.analysis.transfer.layer_transfer
TRANSFER_MODEL = "transfer_model"  # workbench.analysis.transfer.transfer_effect
TRANSFER_LORA = "transfer_lora"  # workbench.studies.lora.lora_transfer: vectors on LoRA fine-tunes and back
BIPO_HISTORY = "bipo_history"  # workbench.train.trainer.TrainResult (BiPO and RePS): per step and per epoch
REFUSAL = "refusal"  # workbench.studies.refusal.refusal_study
MATCHED_COST = "matched_cost"  # workbench.analysis.equal_cost.matched_cost
STUDY_SUMMARY = "study_summary"  # workbench.studies.reproduce.reproduce: what a study run wrote
ACTIVATION_PATCHING = "activation_patching"  # workbench.analysis.patching.activation_patching
ATTRIBUTION_PATCHING = "attribution_patching"  # workbench.analysis.attribution.attribution_patching
DIRECT_LOGIT_ATTRIBUTION = "direct_logit_attribution"  # workbench.analysis.attribution.steered_dla
ATTENTION_SHIFT = "attention_shift"  # workbench.analysis.attention_shift.attention_shifts
MECHANISM_ROUTES = "mechanism_routes"  # workbench.analysis.routes.compare_routes
PROMPTING = "prompting"  # workbench.evaluate.prompting.prompting_baseline: asking instead of steering
ENTANGLEMENT = "entanglement"  # workbench.analysis.entanglement.entanglement: side effects on other behaviors
CONDITIONAL = "conditional"  # workbench.analysis.conditional.conditional_steering: CAST-gated vectors


class ResultFormatError(ValueError):
    """A result that does not fit its schema, of an unknown kind or of a newer schema version."""


@dataclass(frozen=True)
class Schema:
    """What a result of one kind holds."""

    kind: str
    tables: tuple[str, ...] = ()  # keys holding row lists; the first is the main table and required
    required: tuple[str, ...] = ()  # other keys every result of this kind has
    tables_under: str | None = None  # the tables are the values of this mapping (eval: "metrics")


SCHEMAS: dict[str, Schema] = {s.kind: s for s in (
    Schema(EVAL, tables_under="metrics"),
    Schema(SWEEP, ("rows",)),
    Schema(COSINE, required=("labels", "matrix")),
    Schema(COSINE_METHODS, ("rows",)),
    Schema(LOGIT_LENS_TOKENS, ("rows",)),
    Schema(LOGIT_LENS_LAYERS, ("rows",)),
    Schema(COMPOSITION, ("rows", "conditions"), required=("multipliers",)),
    Schema(TRANSFER_LAYERS, ("rows",)),
    Schema(TRANSFER_MODEL, ("rows",)),
    Schema(TRANSFER_LORA, ("rows", "finetunes")),
    Schema(BIPO_HISTORY, ("history", "epochs")),
    Schema(REFUSAL, ("rows", "generations")),
    Schema(MATCHED_COST, ("rows", "points", "slopes"), required=("cost", "budgets")),
    Schema(STUDY_SUMMARY, required=("results", "figures")),
    Schema(ACTIVATION_PATCHING, ("rows", "pairs", "totals"), required=("multiplier",)),
    Schema(ATTRIBUTION_PATCHING, ("rows", "pairs", "totals"), required=("multiplier",)),
    Schema(DIRECT_LOGIT_ATTRIBUTION, ("rows", "layers"), required=("multiplier",)),
    Schema(ATTENTION_SHIFT, ("rows", "heads"), required=("multiplier",)),
    Schema(MECHANISM_ROUTES, ("rows", "cosines")),
    Schema(PROMPTING, ("rows",), required=("instructions",)),
    Schema(ENTANGLEMENT, ("rows",), required=("vectors", "targets")),
    Schema(CONDITIONAL, ("rows", "grid", "scores"), required=("condition",)),
)}


class Result(dict):
    """One result of any analysis, evaluation or study: the JSON-ready mapping
    ``{"kind", "schema_version", ..., <tables>}`` (so ``json.dump`` writes it as it is), with typed access.

    Every public analysis returns one (made by :func:`result`, read back by :func:`from_dict` /
    :func:`load_result`); plotting dispatches on ``kind`` alone.

    Example:
        >>> res = result(TRANSFER_LAYERS, rows=[{"offset": 0, "layer": 14, "multiplier": 1.0, "effect": 0.8}])
        >>> res.kind, res.table().shape
        ('transfer_layers', (1, 4))
    """

    #: The kind a subclass holds (``SweepResult``: ``"sweep"``); None: any kind.
    KIND: ClassVar[str | None] = None

    @classmethod
    def from_dict(cls, obj: Any) -> Result:
        """A result read back from its JSON (checked and migrated by :func:`from_dict`), as this class.

        Raises:
            ResultFormatError: not a result, or (for a subclass) a result of another kind.
        """
        obj = from_dict(obj)
        if cls.KIND is not None and obj["kind"] != cls.KIND:
            raise ResultFormatError(f"expected a {cls.KIND} result, got {obj['kind']!r}")
        return cls(obj)

    @property
    def kind(self) -> str:
        return self["kind"]

    @property
    def tables(self) -> list[str]:
        """The names of this result's tables, main table first (eval: its metrics)."""
        return table_names(self)

    def table(self, name: str | None = None) -> pd.DataFrame:
        """One table as a DataFrame (default: the main one; see :func:`result_table`)."""
        return result_table(self, name)

    @property
    def info(self) -> dict[str, Any]:
        """What describes the run (every key but ``kind``, ``schema_version`` and the tables)."""
        schema = _schema(self.get("kind"))
        skip = {"kind", "schema_version", *schema.tables, *self._not_info}
        if schema.tables_under:
            skip.add(schema.tables_under)
        return {k: v for k, v in self.items() if k not in skip}

    _not_info: tuple[str, ...] = ()  # further keys that are not run information (a subclass's)

    def with_info(self, **info: Any) -> Result:
        """A copy with ``info`` keys added right after ``schema_version`` (as ``result(kind, **info, ...)``
        orders them); a subclass keeps its class and attributes (a sweep's vectors)."""
        head = {"kind": self["kind"], "schema_version": self["schema_version"], **info}
        new = type(self)(from_dict(head | {k: v for k, v in self.items() if k not in head}))
        new.__dict__.update(self.__dict__)
        return new

    def to_dict(self) -> dict[str, Any]:
        """A plain ``dict`` copy (what is written to JSON)."""
        return dict(self)

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON, atomically; returns the path."""
        from workbench.core.io import atomic_write_json  # lazy: core.io imports torch, reading results does not

        return atomic_write_json(dict(self), path)


# --------------------------------------------------------------------------- writing
def records(rows: Any) -> list[dict[str, Any]]:
    """A table (DataFrame, row dicts, or a result: its main table) as JSON-ready row dicts: NaN/inf as
    None, numpy scalars as Python."""
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict(orient="records")
    elif isinstance(rows, Mapping) and "kind" in rows:
        rows = table_rows(rows)
    out = []
    for row in rows:
        clean = {}
        for k, v in row.items():
            if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
                v = v.item()
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            clean[str(k)] = v
        out.append(clean)
    return out


def result(kind: str, **fields: Any) -> Result:
    """A result of ``kind``: ``{"kind", "schema_version", **fields}``, tables given as DataFrames or rows.

    Raises:
        ResultFormatError: ``kind`` is unknown or a field the schema requires is missing.
    """
    schema = _schema(kind)
    out: dict[str, Any] = {"kind": kind, "schema_version": SCHEMA_VERSION}
    for key, value in fields.items():
        if key in schema.tables and value is not None:
            value = records(value)
        elif key == schema.tables_under and isinstance(value, Mapping):
            value = {name: records(rows) for name, rows in value.items()}
        out[key] = value
    return from_dict(out)


# --------------------------------------------------------------------------- reading
def _schema(kind: Any) -> Schema:
    if kind not in SCHEMAS:
        raise ResultFormatError(f"unknown result kind {kind!r}; known kinds: {', '.join(SCHEMAS)}")
    return SCHEMAS[kind]


def _migrate_v1(obj: Any) -> dict[str, Any]:
    """A version-1 result (written before the unified schema) in version 2's form."""
    if isinstance(obj, list):  # a bare list of BiPO step records (the old demo's bipo_history.json)
        obj = {"kind": BIPO_HISTORY, "history": obj, "epochs": []}
    obj = dict(obj)
    if "kind" not in obj and "history" in obj:  # `workbench train`'s history.json
        obj = {"kind": BIPO_HISTORY, "epochs": [], **obj}
    if obj.get("kind") == "transfer":
        obj["kind"] = TRANSFER_MODEL
    obj["schema_version"] = 2
    return obj


def _migrate_v2(obj: Any) -> dict[str, Any]:
    """A version-2 result in version 3's form: a logit lens's ``kl`` is named ``kl_steered_unsteered``."""
    obj = dict(obj)
    if obj.get("kind") == LOGIT_LENS_LAYERS and isinstance(obj.get("rows"), list):
        obj["rows"] = [{("kl_steered_unsteered" if k == "kl" else k): v for k, v in row.items()}
                       if isinstance(row, Mapping) else row for row in obj["rows"]]
    obj["schema_version"] = 3
    return obj


_MIGRATIONS = {1: _migrate_v1, 2: _migrate_v2}  # version -> the step to the next version


def from_dict(obj: Any) -> Result:
    """A result checked against its kind's schema (an older version migrated); a new :class:`Result`.

    Raises:
        ResultFormatError: not a result, an unknown kind, a newer schema version, a missing key, or a
            table that is not a list of row dicts. The message is one line.
    """
    version = obj.get("schema_version", 1) if isinstance(obj, Mapping) else 1
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ResultFormatError(f"schema_version {version!r} is not a positive integer")
    if version > SCHEMA_VERSION:
        raise ResultFormatError(f"result schema_version {version} is newer than this workbench reads "
                                f"({SCHEMA_VERSION}); upgrade workbench to read it")
    while version < SCHEMA_VERSION:
        if not isinstance(obj, (Mapping, list)):
            raise ResultFormatError(f"a result is a JSON object with a 'kind', not {type(obj).__name__}")
        obj = _MIGRATIONS[version](obj)
        version = obj["schema_version"]
    if not isinstance(obj, Mapping):
        raise ResultFormatError(f"a result is a JSON object with a 'kind', not {type(obj).__name__}")
    if "kind" not in obj:
        raise ResultFormatError(f"a result needs a 'kind'; this one has keys {sorted(obj)[:8]}")
    schema = _schema(obj["kind"])
    out = dict(obj)
    missing = [k for k in schema.required if k not in out]
    if schema.tables and schema.tables[0] not in out:
        missing.insert(0, schema.tables[0])
    if schema.tables_under and not isinstance(out.get(schema.tables_under), Mapping):
        missing.insert(0, schema.tables_under)
    if missing:
        raise ResultFormatError(f"{schema.kind} result lacks {', '.join(map(repr, missing))}")
    named = {k: out[k] for k in schema.tables if out.get(k) is not None}
    if schema.tables_under:
        named |= {f"{schema.tables_under}.{k}": v for k, v in out[schema.tables_under].items()}
    for name, rows in named.items():
        if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
            raise ResultFormatError(f"{schema.kind} result: {name!r} is not a list of row dicts")
    return Result(out)


def table_names(res: Mapping[str, Any]) -> list[str]:
    """The names of a result's tables (eval: its metrics), main table first."""
    schema = _schema(res.get("kind"))
    if schema.tables_under:
        return list(res[schema.tables_under])
    return [k for k in schema.tables if res.get(k) is not None]


def rows(res: Mapping[str, Any], name: str | None = None) -> list[dict[str, Any]]:
    """Row dicts of one table of a result (default: its main table; eval: ``"logodds"``).

    A cosine result's table is its matrix, one row per label (``label`` and one column per label).

    Raises:
        ResultFormatError: the result has no such table.
    """
    res = from_dict(res)
    schema = SCHEMAS[res["kind"]]
    if schema.kind == COSINE:
        return [{"label": a, **dict(zip(res["labels"], row))} for a, row in zip(res["labels"], res["matrix"])]
    where = res[schema.tables_under] if schema.tables_under else res
    names = list(where) if schema.tables_under else list(schema.tables)
    if name is None:
        name = "logodds" if schema.tables_under and "logodds" in where else (names[0] if names else None)
    if name is None or name not in names or where.get(name) is None:
        what = "metric" if schema.tables_under else "table"
        raise ResultFormatError(f"{schema.kind} result has no {what} {name!r}; it has {table_names(res)}")
    return list(where[name])


table_rows = rows  # for ``records``, whose argument is named ``rows``


def result_table(res: Mapping[str, Any], name: str | None = None) -> pd.DataFrame:
    """One table of a result as a DataFrame (``rows``; a cosine result: the square, labels as index)."""
    res = from_dict(res)
    if res["kind"] == COSINE:
        return pd.DataFrame(res["matrix"], index=res["labels"], columns=res["labels"], dtype=float)
    return pd.DataFrame(rows(res, name))


def is_result(obj: Any) -> bool:
    """Whether a JSON value is meant as a result: an object with a ``kind``, or a version-1 history."""
    if isinstance(obj, list):
        return bool(obj) and isinstance(obj[0], Mapping) and "loss" in obj[0] and "step" in obj[0]
    return isinstance(obj, Mapping) and ("kind" in obj or ("history" in obj and "schema_version" not in obj))


def load_result(path: str | Path) -> Result:
    """Read one result JSON file through the schema (``from_dict``).

    Raises:
        ResultFormatError: the file is not valid JSON or not a valid result; the message names the file.
    """
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultFormatError(f"{path}: not valid JSON ({exc})") from None
    try:
        return from_dict(obj)
    except ResultFormatError as exc:
        raise ResultFormatError(f"{path}: {exc}") from None


__all__ = ["CONDITIONAL", "ENTANGLEMENT", "ACTIVATION_PATCHING", "ATTENTION_SHIFT", "ATTRIBUTION_PATCHING", "DIRECT_LOGIT_ATTRIBUTION",
           "MECHANISM_ROUTES", "BIPO_HISTORY", "COMPOSITION", "COSINE", "COSINE_METHODS", "EVAL", "LOGIT_LENS_LAYERS",
           "LOGIT_LENS_TOKENS", "MATCHED_COST", "PROMPTING", "REFUSAL", "Result", "SCHEMAS", "SCHEMA_VERSION", "STUDY_SUMMARY", "SWEEP",
           "Schema", "ResultFormatError", "TRANSFER_LAYERS", "TRANSFER_LORA", "TRANSFER_MODEL", "from_dict", "is_result",
           "load_result", "records", "result", "result_table", "rows", "table_names", "table_rows"]
