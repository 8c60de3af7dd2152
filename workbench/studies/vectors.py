"""The study's vectors: BiPO and CAA of each behavior at a layer, made once and reused from disk.

BiPO (Cao et al. 2024, arXiv 2406.00045) and CAA, the mean difference of Rimsky et al. (2023, arXiv
2312.06681), are trained on the same embedded pairs at the same layer; RePS (Wu et al. 2025, arXiv
2505.20809) and PCA join them for the matched-cost comparison only. Vectors are saved under
``<runs_dir>/<behavior>/L<layer>/<method>`` (BiPO's and RePS's ``history.json`` beside theirs) with a
key file holding a hash of model, data and settings: a saved vector is reused only when the key is
the same. The notebooks use ``study_vectors`` as ``reproduce`` does, so they share trained vectors.

With cells (``workbench.studies.cells``: the study's BiPO vectors made by jobs, possibly over several
seeds), BiPO's vector is the complete cell of the study's seed instead of one trained here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workbench.analysis.sweep import parse_layers
from workbench.core.backend import Model
from workbench.core.io import atomic_write_json
from workbench.core.vector import SteeringVector
from workbench.data.behaviors import load_behavior
from workbench.data.pairs import PreferencePair, fingerprint
from workbench.studies.cells import Cell, StudySpec, is_complete
from workbench.studies.config import StudyConfig
from workbench.train.baselines import caa, pca
from workbench.train.bipo import BiPOResult, train_bipo
from workbench.train.reps import train_reps

logger = logging.getLogger(__name__)

METHODS = ("bipo", "caa")
EXTRA_METHODS = ("reps", "pca")  # made for the matched-cost comparison only
KEY_FILE = "study_key.json"
EXTRA_KEY_FILE = "extra_key.json"
HISTORY_FILE = "history.json"


def study_pairs(behavior: str, config: StudyConfig) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """``(train, test)`` pairs of an embedded behavior, cut to ``config.n_train``/``config.n_test``."""
    train, test = load_behavior(behavior, "train"), load_behavior(behavior, "test")
    return train[: config.n_train], test[: config.n_test]


def _hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _key(model: Model, behavior: str, config: StudyConfig, layer: int, train: Sequence[PreferencePair]) -> str:
    return _hash({"model": str(model.cfg.model_name), "behavior": behavior, "data": fingerprint(train),
                  "bipo": config.bipo_config(layer).to_dict()})


def _saved(directory: Path, key_file: Path, key: str, methods: Sequence[str]) -> bool:
    """Whether ``directory`` holds every method's vector, made with the settings hashed in ``key``."""
    return key_file.is_file() and json.loads(key_file.read_text()).get("key") == key and all(
        (directory / m / "vector.json").is_file() for m in methods)


def _labelled(vector: SteeringVector, behavior: str, **extra: Any) -> SteeringVector:
    return vector.replace(metadata={**vector.metadata, "behavior": behavior, **extra})


def study_vectors(model: Model, behavior: str, config: StudyConfig, runs_dir: str | Path,
                  layer: int | None = None, progress: bool = False,
                  cells: tuple[StudySpec, Path] | None = None) -> dict[str, SteeringVector]:
    """BiPO and CAA vectors of one behavior at one layer, loaded from ``runs_dir`` or made and saved.

    Vectors live in ``runs_dir/<behavior>/L<layer>/{bipo,caa}``; BiPO's per-step history is written
    beside its vector as ``history.json`` (``{"kind": "bipo_history", "history", "epochs"}``). A
    saved pair is reused only when model, data and BiPO settings are the same (``study_key.json``).

    Args:
        model: the model.
        behavior: an embedded behavior (``study_pairs``).
        config: the study's settings (``StudyConfig.bipo_config``).
        runs_dir: where vectors are saved and reused from.
        layer: the layer (default ``config.layer``).
        progress: show BiPO's progress bar.
        cells: ``(StudySpec, root)`` of ``cells_spec``: BiPO's vector is the complete cell of
            ``config.seed`` at this layer when there is one (made by a cluster job), instead of
            training here.

    Returns:
        ``{"bipo": vector, "caa": vector}``.
    """
    layer = config.layer if layer is None else layer
    train, _ = study_pairs(behavior, config)
    directory = Path(runs_dir) / behavior / f"L{layer:02d}"
    key = _key(model, behavior, config, layer, train)
    key_file = directory / KEY_FILE
    if _saved(directory, key_file, key, METHODS):
        logger.info("reusing vectors in %s", directory)
        return {m: SteeringVector.load(directory / m) for m in METHODS}
    t0 = time.perf_counter()
    cell = _bipo_cell(behavior, layer, config, cells)
    if cell is not None:
        result = BiPOResult(SteeringVector.load(cell), [], [])
        logger.info("%s: BiPO vector from the cell in %s", behavior, cell)
    else:
        result = train_bipo(model, train, config.bipo_config(layer), progress=progress)
    bipo_seconds = time.perf_counter() - t0
    bipo = _labelled(result.vector, behavior, train_seconds=bipo_seconds)
    t0 = time.perf_counter()
    caa_vec = caa(model, train, layer, hook=config.hook, batch_size=config.eval_batch_size, progress=progress)
    caa_vec = _labelled(caa_vec, behavior, train_seconds=time.perf_counter() - t0)
    # the history is committed with its vector, in one directory rename
    bipo.save(directory / "bipo", extra={HISTORY_FILE: {**result.to_dict(), "behavior": behavior, "layer": layer}})
    caa_vec.save(directory / "caa")
    atomic_write_json({"key": key, "behavior": behavior, "layer": layer, "model": str(model.cfg.model_name)},
                      key_file)
    logger.info("%s: BiPO (norm %.3g) in %.0f s, CAA (norm %.3g) at %s", behavior, bipo.norm, bipo_seconds,
                caa_vec.norm, bipo.hook_name)
    return {"bipo": bipo, "caa": caa_vec}


def study_extra_vectors(model: Model, behavior: str, config: StudyConfig, runs_dir: str | Path,
                        progress: bool = False) -> dict[str, SteeringVector]:
    """RePS and PCA vectors of one behavior at the main layer, for the matched-cost comparison.

    Loaded from ``runs_dir/<behavior>/L<layer>/{reps,pca}`` or made and saved (``extra_key.json``
    holds the settings they were made with; RePS's ``history.json`` beside its vector). Only the
    methods among ``config.compare_methods`` are made.

    Returns:
        ``{"reps": vector, "pca": vector}`` (those wanted).
    """
    wanted = [m for m in EXTRA_METHODS if m in config.compare_methods]
    train, _ = study_pairs(behavior, config)
    directory = Path(runs_dir) / behavior / f"L{config.layer:02d}"
    key = _hash({"model": str(model.cfg.model_name), "behavior": behavior, "data": fingerprint(train),
                 "reps": config.reps_config().to_dict()})
    key_file = directory / EXTRA_KEY_FILE
    if _saved(directory, key_file, key, wanted):
        return {m: SteeringVector.load(directory / m) for m in wanted}
    out: dict[str, SteeringVector] = {}
    if "reps" in wanted:
        t0 = time.perf_counter()
        res = train_reps(model, train, config.reps_config(), progress=progress)
        out["reps"] = _labelled(res.vector, behavior, train_seconds=time.perf_counter() - t0)
        out["reps"].save(directory / "reps",
                         extra={HISTORY_FILE: {**res.to_dict(), "behavior": behavior, "layer": config.layer}})
    if "pca" in wanted:
        out["pca"] = _labelled(pca(model, train, config.layer, hook=config.hook, batch_size=config.eval_batch_size),
                               behavior)
        out["pca"].save(directory / "pca")
    atomic_write_json({"key": key, "behavior": behavior, "layer": config.layer}, key_file)
    logger.info("%s: %s", behavior, ", ".join(f"{m} norm {v.norm:.3g}" for m, v in out.items()))
    return out


def cells_spec(config: StudyConfig, behaviors: Sequence[str], seeds: Sequence[int], model: str | None = None,
               device: str = "cpu", dtype: str = "fp32") -> StudySpec:
    """The study's BiPO vectors as cells: every behavior at the main layer and the BiPO sweep layers,
    for every seed; their aggregate is ``seeds.json`` (mean and spread over seeds).

    Args:
        config: the study's settings.
        behaviors: the behaviors.
        seeds: BiPO's seeds.
        model, device, dtype: what each job loads (``load_model``).
    """
    layers = {config.layer} | (set(parse_layers(config.bipo_sweep_layers)) if config.bipo_sweep_layers else set())
    bipo = {k: v for k, v in config.bipo_config().to_dict().items() if k not in ("layer", "hook", "seed")}
    return StudySpec(data=tuple(behaviors), method="bipo", layers=tuple(sorted(layers)), seeds=tuple(seeds),
                     model=model, device=device, dtype=dtype, hook=config.hook,
                     multipliers=tuple(config.sweep_multipliers), n_train=config.n_train, n_test=config.n_test,
                     bipo=bipo, batch_size=config.eval_batch_size)


def _bipo_cell(behavior: str, layer: int, config: StudyConfig,
               cells: tuple[StudySpec, Path] | None) -> Path | None:
    """The directory of the complete BiPO cell of ``config.seed`` at ``layer``, or None."""
    if cells is None:
        return None
    spec, root = cells
    cell = Cell(behavior, "bipo", layer, config.seed)
    return cell.directory(root) if layer in spec.layers and is_complete(spec, cell, root) else None


__all__ = ["EXTRA_METHODS", "HISTORY_FILE", "KEY_FILE", "METHODS", "cells_spec", "study_extra_vectors", "study_pairs",
           "study_vectors"]
