"""Studies as independent cells, run in one process or dispatched with submitit (Slurm, local, debug).

A *cell* is ``(data, method, layer, seed)``: the training pairs of an embedded behavior or a data file,
``"caa"`` or ``"bipo"``, a layer and BiPO's seed. It writes one directory,
``<root>/cells/<data>/<method>/L<layer>/seed<seed>/``, holding the vector (``vector.safetensors`` +
``vector.json``, written atomically) and ``cell.json``: the cell's key (a hash of everything that
determines it) and its steering effect on the held-out pairs, measured by the job that made the
vector. ``cell.json`` is written last; a directory without it, or with another key, is run again. So a
killed study, resubmitted, runs only its missing cells.

Cells are grouped into *jobs*: every layer of one ``(data, method, seed)`` shares a job, so the model
loads once per job and CAA stays one pass for all of the job's layers. Executors:

* ``inline``: the jobs run one after another in this process (the default; no submitit needed);
* ``debug``: submitit's debug executor (in this process, through submitit's machinery);
* ``local``: submitit's local executor (one subprocess per job on this machine);
* ``slurm``: ``sbatch`` job arrays (partition, GPUs per task, time, array parallelism).

``aggregate`` gathers the cells into a ``sweep`` result, one row per (data, method, layer) with the
mean over seeds and ``*_std`` columns (sample standard deviation, 0 for one seed), plus the per-seed
rows. Nothing in aggregation loads a model: the effects were measured in the cells.

Seeds: ``seeds`` are BiPO's seeds (CAA is deterministic and runs for the first seed only),
``split_seed`` the seed of the train/held-out split of a data file; the bootstrap seed of the
evaluation commands is a third, separate option.

Jobs run through submitit are handed to the scheduler as submitit's own pickles of
``(run_job, spec, root, cells)``: plain dataclasses of strings and numbers, written and read by
this package's processes only. Vectors, effects and every result are safetensors + JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from workbench.analysis.similarity import cosine
from workbench.analysis.sweep import effect_column, steering_effects
from workbench.core.io import atomic_write_json
from workbench.core.loading import load_model
from workbench.core.results import SWEEP, records, result
from workbench.core.vector import SteeringVector
from workbench.data.behaviors import list_behaviors, load_behavior
from workbench.data.formats import load_pairs
from workbench.data.pairs import fingerprint, train_test_split
from workbench.train.baselines import mean_difference_vectors
from workbench.train.bipo import BiPOConfig, train_bipo

logger = logging.getLogger(__name__)

EXECUTORS = ("inline", "debug", "local", "slurm")
Executor = Literal["inline", "debug", "local", "slurm"]
CELL_FILE = "cell.json"
#: For the kill test only: the job kills itself with SIGKILL after this many cells.
_KILL_AFTER_ENV = "WORKBENCH_CELLS_KILL_AFTER"


@dataclass(frozen=True)
class StudySpec:
    """What every cell of a study shares (everything but ``data``, ``layer`` and ``seed`` of a cell)."""

    data: tuple[str, ...]  # embedded behavior names or data files
    method: Literal["caa", "bipo"] = "caa"
    layers: tuple[int, ...] = (14,)
    seeds: tuple[int, ...] = (0,)  # BiPO's seeds
    model: str | None = None  # load_model's name or directory (None: the embedded model)
    device: str = "cpu"
    dtype: str = "fp32"
    hook: str = "resid_post"
    position: str = "answer_mean"  # CAA's position rule
    multipliers: tuple[float, ...] = (-1.0, 1.0)
    n_train: int | None = None
    n_test: int | None = None
    data_format: str = "auto"
    test_fraction: float = 0.2
    split_seed: int = 0
    allow_empty_question: bool = False
    bipo: dict[str, Any] = field(default_factory=dict)  # BiPOConfig fields other than layer, hook, seed
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.method not in ("caa", "bipo"):
            raise ValueError(f"method={self.method!r}: use 'caa' or 'bipo'")
        for name in ("data", "layers", "seeds"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty: a study needs at least one")
        bad = sorted(set(self.bipo) & {"layer", "hook", "seed"})
        if bad:
            raise ValueError(f"bipo={self.bipo!r}: {bad} are set per cell (layers, hook, seeds)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def cells(self) -> list[Cell]:
        seeds = self.seeds if self.method == "bipo" else self.seeds[:1]  # CAA does not depend on the seed
        return [Cell(d, self.method, layer, s) for d in self.data for s in seeds for layer in self.layers]

    def key(self, cell: Cell) -> str:
        """Hash of everything that determines ``cell``'s directory (not the executor, not the other cells)."""
        shared = {k: v for k, v in self.to_dict().items() if k not in ("data", "layers", "seeds", "device")}
        spec = {"cell": dataclasses.asdict(cell), **shared, "data_fingerprint": _fingerprint(cell.data, self)}
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    data: str
    method: str
    layer: int
    seed: int

    @property
    def name(self) -> str:
        return f"{_slug(self.data)}/{self.method}/L{self.layer:02d}/seed{self.seed}"

    def directory(self, root: str | Path) -> Path:
        return Path(root) / "cells" / self.name


def _slug(data: str) -> str:
    """A directory name for a behavior or a data file (its stem plus a short hash of the path)."""
    if data in list_behaviors():
        return data
    p = Path(data)
    return f"{p.stem}-{hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:6]}"


def study_data(data: str, spec: StudySpec) -> tuple[list[Any], list[Any]]:
    """``(train, held_out)`` pairs of one data entry: an embedded behavior's splits, or a file split by ``split_seed``."""
    if data in list_behaviors():
        train, test = load_behavior(data, "train"), load_behavior(data, "test")
    else:
        pairs = load_pairs(data, spec.data_format, allow_empty_question=spec.allow_empty_question)
        train, test = train_test_split(pairs, spec.test_fraction, spec.split_seed)
    train, test = train[: spec.n_train], test[: spec.n_test]
    if not train or not test:
        raise ValueError(f"data {data!r}: {len(train)} training and {len(test)} held-out pairs; need both")
    return train, test


_FINGERPRINTS: dict[str, str] = {}


def _fingerprint(data: str, spec: StudySpec) -> str:
    """Fingerprint of a data entry's train and held-out pairs (memoised: every cell's key needs it)."""
    memo = json.dumps([data, spec.data_format, spec.test_fraction, spec.split_seed, spec.allow_empty_question,
                       spec.n_train, spec.n_test, _mtime(data)])
    if memo not in _FINGERPRINTS:
        train, test = study_data(data, spec)
        _FINGERPRINTS[memo] = fingerprint(train) + fingerprint(test)
    return _FINGERPRINTS[memo]


def _mtime(data: str) -> float | None:
    try:
        return Path(data).stat().st_mtime
    except OSError:
        return None


def is_complete(spec: StudySpec, cell: Cell, root: str | Path) -> bool:
    path = cell.directory(root) / CELL_FILE
    try:
        return json.loads(path.read_text()).get("key") == spec.key(cell) and (path.parent / "vector.json").is_file()
    except (OSError, json.JSONDecodeError):
        return False


def jobs(spec: StudySpec, cells: Sequence[Cell]) -> list[list[Cell]]:
    """Cells grouped so that every layer of one (data, method, seed) shares a job."""
    groups: dict[tuple[str, str, int], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.data, c.method, c.seed), []).append(c)
    return list(groups.values())


# --------------------------------------------------------------------------- one job
def run_job(spec: StudySpec, root: str, cells: Sequence[Cell], model: Any = None) -> list[str]:
    """Make and measure the missing ``cells`` (all of one data entry, method and seed); returns their names.

    Loads the model once (``spec.model``/``device``/``dtype``) unless ``model`` is given.
    """
    todo = [c for c in cells if not is_complete(spec, c, root)]
    if not todo:
        return []
    if len({(c.data, c.method, c.seed) for c in todo}) != 1:
        raise ValueError("run_job takes the cells of one (data, method, seed)")
    if model is None:
        model = load_model(spec.model, device=spec.device, dtype=spec.dtype)
    data, method, seed = todo[0].data, todo[0].method, todo[0].seed
    train, test = study_data(data, spec)
    kill_after = int(os.environ.get(_KILL_AFTER_ENV, "0") or 0)
    ran: list[str] = []
    vectors, seconds = _make_vectors(model, spec, method, seed, [c.layer for c in todo], train)
    for cell in todo:
        v = vectors[cell.layer]
        effects = steering_effects(model, {cell.layer: v}, test, spec.multipliers, batch_size=spec.batch_size)
        directory = cell.directory(root)
        v.save(directory)
        at = {f"{m:+g}": effects[effects.multiplier == m].iloc[0] for m in spec.multipliers}
        atomic_write_json({"kind": "cell", "key": spec.key(cell), "cell": dataclasses.asdict(cell),
                           "hook_name": v.hook_name, "norm": v.norm, "train_seconds": seconds[cell.layer],
                           "n_train": len(train), "n_test": len(test),
                           "base_logodds": effects.attrs["base_logodds"],
                           "effects": {k: float(row.effect) for k, row in at.items()},
                           # the effect's paired bootstrap interval (cells written before it held "effect_sems")
                           "effect_intervals": {k: [float(row.effect_ci_low), float(row.effect_ci_high)]
                                                for k, row in at.items()}},
                          directory / CELL_FILE)  # last: marks the cell complete
        ran.append(cell.name)
        logger.info("cell %s done", cell.name)
        if kill_after and len(ran) >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    return ran


def _make_vectors(model: Any, spec: StudySpec, method: str, seed: int, layers: Sequence[int],
                  train: Sequence[Any]) -> tuple[dict[int, Any], dict[int, float]]:
    if method == "caa":
        t0 = time.perf_counter()
        vecs = mean_difference_vectors(model, train, list(layers), hook=spec.hook, position=spec.position,
                                       batch_size=spec.batch_size, progress=False)
        per = (time.perf_counter() - t0) / len(layers)
        return vecs, {layer: per for layer in layers}
    vecs, seconds = {}, {}
    for layer in layers:
        t0 = time.perf_counter()
        config = BiPOConfig(**{**spec.bipo, "layer": layer, "hook": spec.hook, "seed": seed})
        vecs[layer] = train_bipo(model, train, config, progress=False).vector
        seconds[layer] = time.perf_counter() - t0
    return vecs, seconds


# --------------------------------------------------------------------------- the study
@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int | None = None
    time_min: int = 60
    array_parallelism: int = 64
    mem_gb: float | None = None


def run_study(spec: StudySpec, root: str | Path, *, executor: Executor = "inline", model: Any = None,
              slurm: SlurmOptions = SlurmOptions()) -> dict[str, Any]:
    """Run every missing cell of ``spec`` under ``root`` (module docstring); returns counts and names.

    Args:
        model: with ``executor="inline"``, an already loaded model to use instead of ``spec.model``.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor={executor!r}: use one of {', '.join(EXECUTORS)}")
    root = Path(root)
    cells = spec.cells()
    missing = [c for c in cells if not is_complete(spec, c, root)]
    groups = jobs(spec, missing)
    t0 = time.perf_counter()
    if executor == "inline":
        ran = [name for g in groups for name in run_job(spec, str(root), g, model=model)]
    else:
        ran = _submit(spec, root, groups, executor, slurm)
    return {"cells": len(cells), "complete_before": len(cells) - len(missing), "jobs": len(groups),
            "ran": ran, "seconds": round(time.perf_counter() - t0, 2), "executor": executor}


def _submit(spec: StudySpec, root: Path, groups: list[list[Cell]], executor: str, slurm: SlurmOptions) -> list[str]:
    try:  # lazy: only the dispatching executors need submitit, and importing it costs a second
        import submitit
    except ImportError as exc:  # pragma: no cover - submitit is a dependency
        raise ValueError(f"executor={executor!r} needs submitit (pip install submitit)") from exc
    if not groups:
        return []
    ex = submitit.AutoExecutor(folder=root / "submitit", cluster=None if executor == "slurm" else executor)
    params: dict[str, Any] = {"timeout_min": slurm.time_min, "gpus_per_node": slurm.gpus_per_task,
                              "tasks_per_node": 1, "slurm_array_parallelism": slurm.array_parallelism,
                              "name": "workbench-cells"}
    if slurm.partition:
        params["slurm_partition"] = slurm.partition
    if slurm.cpus_per_task:
        params["cpus_per_task"] = slurm.cpus_per_task
    if slurm.mem_gb:
        params["mem_gb"] = slurm.mem_gb
    ex.update_parameters(**params)
    submitted = ex.map_array(run_job, [spec] * len(groups), [str(root)] * len(groups), groups)
    ran: list[str] = []
    failures = []
    for job, group in zip(submitted, groups):
        try:
            ran += job.result()
        except Exception as exc:  # a killed or failed job: its complete cells stay, the rest run next time
            failures.append(f"{group[0].data}/{group[0].method}/seed{group[0].seed}: {str(exc).splitlines()[0]}")
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(groups)} job(s) failed (resubmit to run only the missing "
                           f"cells): " + "; ".join(failures))
    return ran


# --------------------------------------------------------------------------- aggregation
def aggregate(spec: StudySpec, root: str | Path) -> dict[str, Any]:
    """Gather the cells into a ``sweep`` result: per (data, method, layer) the mean over seeds and ``*_std``.

    ``cos_prev`` is the cosine to the previous layer's vector of the same seed. Raises naming the
    missing cells if the study is incomplete.
    """
    root = Path(root)
    cells = spec.cells()
    missing = [c.name for c in cells if not is_complete(spec, c, root)]
    if missing:
        raise ValueError(f"{len(missing)} cell(s) of the study in {root} are missing or stale "
                         f"(first: {missing[0]}); run the study first")
    seed_rows: list[dict[str, Any]] = []
    for data in spec.data:
        for seed in sorted({c.seed for c in cells}):
            prev = None
            for layer in spec.layers:
                cell = Cell(data, spec.method, layer, seed)
                info = json.loads((cell.directory(root) / CELL_FILE).read_text())
                v = SteeringVector.load(cell.directory(root))
                row = {"data": data, "seed": seed, "layer": layer, "method": spec.method, "hook_name": info["hook_name"],
                       "norm": info["norm"], "cos_prev": _cosine_or_nan(v, prev),
                       "base_logodds": info["base_logodds"], "train_seconds": info["train_seconds"]}
                row |= {effect_column(float(m)): info["effects"][f"{float(m):+g}"] for m in spec.multipliers}
                seed_rows.append(row)
                prev = v
    numeric = ["norm", "cos_prev", "base_logodds", "train_seconds"] + [effect_column(float(m))
                                                                       for m in spec.multipliers]
    rows = []
    for data in spec.data:
        for layer in spec.layers:
            group = [r for r in seed_rows if r["data"] == data and r["layer"] == layer]
            row = {k: group[0][k] for k in ("data", "layer", "method", "hook_name")} | {"n_seeds": len(group)}
            for k in numeric:
                vals = [r[k] for r in group if not (isinstance(r[k], float) and math.isnan(r[k]))]
                row[k] = sum(vals) / len(vals) if vals else None
                row[f"{k}_std"] = _std(vals) if vals else None
            rows.append(row)
    return result(SWEEP, method=spec.method, model=spec.model or "embedded", hook=spec.hook, layers=list(spec.layers),
                  multipliers=[float(m) for m in spec.multipliers],
                  seeds=list(spec.seeds if spec.method == "bipo" else spec.seeds[:1]), data=list(spec.data),
                  study=spec.to_dict(), columns=list(rows[0]), rows=pd.DataFrame(rows),
                  seed_rows=records(pd.DataFrame(seed_rows)))


def _cosine_or_nan(v: Any, prev: Any) -> float:
    """Cosine to the previous layer's vector; NaN for the first layer or a zero vector (no direction)."""
    if prev is None or v.norm == 0 or prev.norm == 0:
        return float("nan")
    return cosine(v, prev)


def _std(vals: Sequence[float]) -> float:
    if len(vals) < 2:
        return 0.0
    mean = sum(vals) / len(vals)
    return math.sqrt(sum((x - mean) ** 2 for x in vals) / (len(vals) - 1))
