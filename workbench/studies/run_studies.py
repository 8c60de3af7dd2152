"""The ``workbench sweep``, ``demo`` and ``reproduce`` runs: layer sweeps and the study.

``sweep`` makes a CAA (Rimsky et al. 2023, arXiv 2312.06681) or BiPO (Cao et al. 2024, arXiv 2406.00045)
vector at each layer (``workbench.analysis.sweep.layer_sweep``), or, with several seeds or another
executor, as cells (``workbench.studies.cells``); ``demo`` and ``reproduce`` run
``workbench.studies.reproduce``'s main job and whole study. Options are checked before the model loads.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import workbench.studies.reproduce as study  # the module: ``study.reproduce`` is looked up at each call
from workbench.analysis.sweep import SweepResult, layer_sweep, parse_layers
from workbench.core.io import atomic_write_json
from workbench.core.embedded import EMBEDDED_N_LAYERS
from workbench.data.behaviors import list_behaviors, load_behavior
from workbench.data.formats import load_pairs
from workbench.data.pairs import train_test_split
from workbench.evaluate.statistics import DEFAULT_MULTIPLIERS
from workbench.studies.cells import SlurmOptions, StudySpec, aggregate, run_study
from workbench.studies.config import ExecutionConfig, StudyConfig
from workbench.studies.runs import (DataOptions, Log, ModelOptions, RunError, check_at_least_one, check_data, check_out,
                                    check_run_multipliers, silent, write_result)
from workbench.train import BiPOConfig


@dataclass(kw_only=True)
class ExecutorOptions:
    """Where a study's cells run (``workbench.studies.cells``) and the Slurm options."""

    executor: str = "inline"  # inline (this process), debug, local (subprocesses) or slurm
    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int | None = None
    time: int = 60  # minutes per job
    array_parallelism: int = 64

    def slurm(self) -> SlurmOptions:
        return SlurmOptions(partition=self.partition, gpus_per_task=self.gpus_per_task,
                            cpus_per_task=self.cpus_per_task, time_min=self.time,
                            array_parallelism=self.array_parallelism)


SWEEP_TEST_FRACTION = 0.2  # the held-out share of --data when --test-fraction is not given


@dataclass(kw_only=True)
class SweepRun(ModelOptions, DataOptions, ExecutorOptions):
    """Options of ``workbench sweep``."""

    out: str  # result JSON (kind "sweep")
    method: str = "caa"  # caa or bipo
    layers: str | None = None  # e.g. 0-29, 0,5,10 or 10-20:2 (None: every layer)
    test_fraction: float | None = None  # held-out share of data (None: SWEEP_TEST_FRACTION; not with behavior)
    seeds: Sequence[int] = (0,)  # BiPO seeds, one vector per layer and seed
    limit: int | None = None  # at most N training pairs
    eval_limit: int | None = None  # at most N held-out pairs
    multipliers: Sequence[float] = (-1.0, 1.0)
    hook: str = "resid_post"
    position: str = "answer_mean"
    reference_layer: int | None = None  # add cos_ref: the cosine to this layer's vector
    epochs: int | None = None  # BiPO (None: BiPOConfig's)
    lr: float | None = None  # BiPO (None: BiPOConfig's)
    batch_size: int = 8
    save_vectors: str | None = None  # also save each vector to DIR/layer_LL
    cells_dir: str | None = None  # where the cells are written (None: OUT without .json, plus _cells)


def _held_out_fraction(config: SweepRun) -> float:
    return SWEEP_TEST_FRACTION if config.test_fraction is None else config.test_fraction


def _sweep_cells(config: SweepRun, source: str, out_path: str, log: Log) -> dict[str, Any]:
    """The sweep as cells: vectors and effects per (data, layer, seed), then one aggregated result."""
    t0 = time.perf_counter()
    model = None
    if config.layers in (None, "all"):
        if config.model is not None or config.executor == "inline":
            model = config.load_model()
            n_layers = model.cfg.n_layers
        else:
            n_layers = EMBEDDED_N_LAYERS
        spec_layers = f"0-{n_layers - 1}"
    else:
        spec_layers = config.layers
    layers = parse_layers(spec_layers, None)
    bipo = {k: v for k, v in (("epochs", config.epochs), ("lr", config.lr)) if v is not None}
    spec = StudySpec(data=(config.behavior or str(config.data),), method=config.method, layers=tuple(layers),
                     seeds=tuple(config.seeds), model=config.model, device=config.device, dtype=config.dtype,
                     hook=config.hook, position=config.position, multipliers=tuple(config.multipliers),
                     n_train=config.limit, n_test=config.eval_limit, data_format=config.format,
                     test_fraction=_held_out_fraction(config), split_seed=config.split_seed,
                     allow_empty_question=config.allow_empty_question, bipo=bipo, batch_size=config.batch_size)
    out = Path(config.out)
    root = Path(config.cells_dir) if config.cells_dir else out.with_name(out.stem + "_cells")
    if config.executor == "inline" and model is None:
        model = config.load_model()
    log(f"sweep: {config.method} at {len(layers)} layers x {len(spec.seeds) if config.method == 'bipo' else 1} "
        f"seed(s) from {source} as cells in {root} ({config.executor})")
    summary = run_study(spec, root, executor=config.executor, model=model, slurm=config.slurm())
    log(f"sweep: {len(summary['ran'])} cell(s) run, {summary['complete_before']} of {summary['cells']} already "
        f"complete")
    result = aggregate(spec, root) | {"run": summary, "data_source": source, "seconds": time.perf_counter() - t0}
    if model is None:  # the cells loaded the model in their own processes: no prompt format known here
        atomic_write_json(result, out_path)
    else:
        result = write_result(result, out_path, model)
    log(f"wrote {config.out}")
    return result


def sweep_run(config: SweepRun, log: Log = silent) -> tuple[dict[str, Any], SweepResult | None]:
    """A vector per layer and its effect; writes ``config.out``.

    Returns:
        The result as written and the sweep (``format_sweep`` prints it; None when run as cells,
        whose result aggregates seeds).
    """
    out = check_out("--out", config.out, kind="file")
    save_vectors = check_out("--save-vectors", config.save_vectors, kind="dir")
    check_out("--cells-dir", config.cells_dir, kind="dir")
    check_data(config.data)
    check_at_least_one(config, "limit", "eval_limit", "batch_size")
    check_run_multipliers(config.multipliers)
    config.check_model()
    config.check_source()
    if config.method == "caa" and (config.epochs is not None or config.lr is not None):
        raise RunError("--epochs and --lr apply to --method bipo only")
    if config.behavior is not None:
        train, held_out = load_behavior(config.behavior, "train"), load_behavior(config.behavior, "test")
        source = f"behavior:{config.behavior}"
    else:
        train, held_out = train_test_split(load_pairs(config.data, config.format, **config.loader_options()),
                                           _held_out_fraction(config), config.split_seed)
        source = str(config.data)
    train, held_out = train[: config.limit], held_out[: config.eval_limit]
    if not held_out:
        raise RunError(f"{source}: no held-out pairs to measure the effect on (raise --test-fraction)")
    if config.executor != "inline" or len(config.seeds) > 1 or config.cells_dir:
        return _sweep_cells(config, source, out, log), None
    t0 = time.perf_counter()
    model = config.load_model()
    layers = parse_layers(config.layers if config.layers is not None else f"0-{model.cfg.n_layers - 1}",
                          model.cfg.n_layers)
    if config.reference_layer is not None and config.reference_layer not in layers:
        raise RunError(f"--reference-layer {config.reference_layer} is not one of the swept layers {layers}")
    bipo_config = None
    if config.method == "bipo":
        changes = {k: v for k, v in (("epochs", config.epochs), ("lr", config.lr)) if v is not None}
        bipo_config = dataclasses.replace(BiPOConfig(seed=config.seeds[0]), **changes)
    log(f"sweep: {config.method} at {len(layers)} layers of {model.cfg.model_name}, {len(train)} training "
        f"and {len(held_out)} held-out pairs from {source}")
    swept = layer_sweep(model, train, held_out, layers, method=config.method, multipliers=list(config.multipliers),
                        hook=config.hook, reference=config.reference_layer, bipo_config=bipo_config,
                        position=config.position, batch_size=config.batch_size, progress=True)
    result = swept.to_dict()
    result.update(data=source, bipo_config=bipo_config.to_dict() if bipo_config else None,
                  seconds=time.perf_counter() - t0)
    if save_vectors:
        result["vectors"] = swept.save_vectors(save_vectors)
    result = write_result(result, out, model)
    log(f"wrote {config.out}" + (f" and {len(layers)} vectors under {config.save_vectors}"
                                 if config.save_vectors else ""))
    return result, swept


@dataclass(kw_only=True)
class DemoRun(ModelOptions):
    """Options of ``workbench demo``."""

    behavior: str = "power-seeking"  # embedded behavior
    layer: int | None = None  # block of the resid_post hook (None: BiPOConfig's)
    epochs: int | None = None  # BiPO epochs (None: BiPOConfig's)
    multipliers: Sequence[float] = DEFAULT_MULTIPLIERS
    precision: str = "fp32"
    quick: bool = False  # tiny sizes for smoke tests
    out: str = "runs/demo"


def demo_run(config: DemoRun, log: Log = silent) -> dict[str, Any]:
    """BiPO and CAA of one behavior, evaluated (``workbench.studies.reproduce.demo``); returns the eval result."""
    t_start = time.perf_counter()
    if config.behavior not in list_behaviors():
        raise RunError(f"--behavior {config.behavior!r}: choose one of {', '.join(list_behaviors())}")
    check_at_least_one(config, "epochs")
    multipliers = check_run_multipliers(config.multipliers)
    config.check_model()
    out = Path(check_out("--out", config.out, kind="dir"))
    changes = {k: v for k, v in (("layer", config.layer), ("epochs", config.epochs)) if v is not None}
    study_config = dataclasses.replace(StudyConfig.demo(config.behavior, quick=config.quick),
                                       multipliers=tuple(multipliers), precision=config.precision, **changes)
    try:
        bipo_config = study_config.bipo_config()
    except ValueError as exc:
        raise RunError(str(exc)) from None
    model = config.load_model()
    if study_config.layer >= model.cfg.n_layers:
        raise RunError(f"--layer {study_config.layer}: {model.cfg.model_name} has layers 0..{model.cfg.n_layers - 1}")
    log(f"demo: {config.behavior} on {model.cfg.model_name}: {study_config.n_train or 'all'} train / "
        f"{study_config.n_test or 'all'} test pairs, layer {study_config.layer} {study_config.hook}, BiPO "
        f"{bipo_config.epochs} epoch(s), lr {bipo_config.lr}")
    result = study.demo(out, study_config, model=model, progress=True)
    log(f"\nwrote {out / 'eval.json'}, {out / 'logodds.png'} and vectors under {out / 'vectors'}; "
        f"total {time.perf_counter() - t_start:.0f} s")
    return result


@dataclass(kw_only=True)
class ReproduceRun(ModelOptions, ExecutorOptions):
    """Options of ``workbench reproduce``."""

    out: str = "results"
    figures: str = "figures"
    quick: bool = False  # smoke test sizes (StudyConfig.quick())
    behaviors: Sequence[str] | None = None  # None: all embedded behaviors
    layer: int | None = None  # layer of the main vectors (None: StudyConfig's)
    stages: Sequence[str] | None = None  # None: every stage but the opt-in ones (reproduce.OPT_IN_STAGES)
    truthfulqa: str | None = None  # TruthfulQA mc_task.json for the truthfulness stage
    force: bool = False  # recompute stages whose JSON exists
    seeds: Sequence[int] | None = None  # BiPO seeds, made as cells


def reproduce_run(config: ReproduceRun, log: Log = silent) -> dict[str, Any]:
    """The whole study into ``config.out`` and its figures into ``config.figures``; returns its summary
    (``workbench.studies.reproduce.reproduce``) with ``"seconds"``."""
    study_config = StudyConfig.quick() if config.quick else StudyConfig()
    config.check_model()
    out = check_out("--out", config.out, kind="dir")
    figures = check_out("--figures", config.figures, kind="dir")
    if config.truthfulqa is not None and not Path(config.truthfulqa).is_file():
        raise RunError(f"--truthfulqa {config.truthfulqa}: no such file")
    changes = {k: v for k, v in (("behaviors", tuple(config.behaviors) if config.behaviors else None),
                                 ("layer", config.layer), ("truthfulqa", config.truthfulqa)) if v is not None}
    try:
        study_config = dataclasses.replace(study_config, **changes)
    except (TypeError, ValueError) as exc:
        raise RunError(str(exc)) from None
    stages = tuple(config.stages) if config.stages else study.DEFAULT_STAGES
    bad = [s for s in stages if s not in study.STAGES]
    if bad:
        raise RunError(f"--stages: unknown stage(s) {bad}; valid: {' '.join(study.STAGES)}")
    model = None
    if config.executor == "inline" and (config.model is not None or config.device != "cpu" or config.dtype != "fp32"
                                        or config.n_devices != 1):
        model = config.load_model()
    if config.seeds and study_config.seed not in config.seeds:
        raise RunError(f"--seeds {' '.join(map(str, config.seeds))}: must include the study's seed {study_config.seed}")
    execution = ExecutionConfig(executor=config.executor, seeds=None if config.seeds is None else tuple(config.seeds),
                                cells_model=(config.model, config.device, config.dtype), slurm=config.slurm())
    t0 = time.perf_counter()
    summary = study.reproduce(out, study_config, model=model, figures_dir=figures, stages=stages,
                              force=config.force, log=log, execution=execution)
    return {**summary, "seconds": time.perf_counter() - t0}


__all__ = ["SWEEP_TEST_FRACTION", "DemoRun", "ExecutorOptions", "ReproduceRun", "SweepRun", "demo_run", "reproduce_run", "sweep_run"]
