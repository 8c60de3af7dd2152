"""The ``workbench entanglement`` run: each behavior's vector on every other behavior's held-out pairs.

SteeringControl / SteeringSafety (2025) ask what else a steering vector changes. This run loads one
vector per embedded behavior (``--vector BEHAVIOR=DIR``, or ``--vectors-root ROOT`` holding
``ROOT/<behavior>/L<layer>/<method>`` as ``workbench reproduce`` writes them), takes each vector's
multiplier from its behavior's ``compare`` result at one budget (``--compare DIR`` holding
``compare_<behavior>.json``; ``workbench.analysis.entanglement.matched_multipliers``) or
``--multiplier``, and scores every vector on every behavior's held-out pairs, the embedded refusal
pairs and, with ``--truthfulqa``, TruthfulQA MC1 (``workbench.analysis.entanglement.measure_entanglement``).
Paths and options are checked before the model loads; the result and its figure are written
atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.analysis.entanglement import entanglement_matrix, matched_multipliers, measure_entanglement
from workbench.core.results import ResultFormatError, load_result
from workbench.core.vector import SteeringVector
from workbench.data.behaviors import list_behaviors, load_behavior
from workbench.data.formats import load_truthfulqa
from workbench.studies.runs import Log, ModelOptions, RunError, check_at_least_one, check_out, silent, write_result
from workbench.viz.figures import figures_for
from workbench.viz.report import markdown_table
from workbench.viz.style import save_figure


@dataclass(kw_only=True)
class EntanglementRun(ModelOptions):
    """Options of ``workbench entanglement``."""

    out: str  # result JSON (kind "entanglement"); its figure is written beside it
    vector: Sequence[str] | None = None  # BEHAVIOR=DIR, one per behavior
    vectors_root: str | None = None  # ROOT/<behavior>/L<layer>/<method> for every embedded behavior found there
    method: str = "bipo"  # the vector folder under ROOT/<behavior>/L<layer>, and its label in --compare
    layer: int | None = None  # L<layer> under ROOT/<behavior> (default: the only one there)
    compare: str | None = None  # a directory of compare_<behavior>.json (matched_cost) results
    budget: float = 0.1  # the budget whose matched-cost multiplier each vector takes
    multiplier: float = 1.0  # the multiplier of vectors without a --compare result
    truthfulqa: str | None = None  # TruthfulQA mc_task.json: also score MC1
    truthfulqa_limit: int | None = None  # at most N TruthfulQA questions
    refusal: bool = True  # also score the embedded refusal pairs (when refusal is not one of the behaviors)
    limit: int | None = None  # at most N held-out pairs per behavior
    batch_size: int = 16
    n_boot: int = 1000
    seed: int = 0  # bootstrap seed


def _vector_dirs(config: EntanglementRun) -> dict[str, Path]:
    """``{behavior: vector directory}`` from ``--vector`` and ``--vectors-root``; checked, nothing loaded."""
    dirs: dict[str, Path] = {}
    for spec in config.vector or ():
        behavior, sep, path = str(spec).partition("=")
        if not sep or not behavior or not path:
            raise RunError(f"--vector {spec}: give BEHAVIOR=DIR")
        dirs[behavior] = Path(path)
    if config.vectors_root is not None:
        root = Path(config.vectors_root)
        if not root.is_dir():
            raise RunError(f"--vectors-root {root}: no such directory")
        for behavior in list_behaviors():
            layers = sorted(root.glob(f"{behavior}/L*/{config.method}")) if config.layer is None else \
                [root / behavior / f"L{config.layer:02d}" / config.method]
            layers = [p for p in layers if (p / "vector.json").is_file()]
            if len(layers) > 1:
                raise RunError(f"--vectors-root {root}: {behavior} has {config.method} vectors at several layers "
                               f"({', '.join(p.parent.name for p in layers)}); pick one with --layer")
            if layers and behavior not in dirs:
                dirs[behavior] = layers[0]
    if not dirs:
        raise RunError("no vector: give --vector BEHAVIOR=DIR or --vectors-root ROOT")
    for behavior, path in dirs.items():
        if behavior not in list_behaviors():
            raise RunError(f"--vector {behavior}={path}: {behavior!r} is not an embedded behavior "
                           f"({', '.join(list_behaviors())})")
        if not (path / "vector.json").is_file():
            raise RunError(f"--vector {behavior}={path}: no vector directory there")
    return dirs


def entanglement_run(config: EntanglementRun, log: Log = silent) -> dict[str, Any]:
    """The entanglement matrix of the vectors; writes ``config.out`` and its figure, returns the result."""
    check_at_least_one(config, "limit", "truthfulqa_limit", "batch_size")
    config.check_model()
    out = check_out("--out", config.out, kind="file")
    dirs = _vector_dirs(config)
    multipliers: dict[str, float] = {}
    if config.compare is not None:
        root = Path(config.compare)
        if not root.is_dir():
            raise RunError(f"--compare {root}: no such directory")
        compare = {}
        for behavior in dirs:
            path = root / f"compare_{behavior}.json"
            if path.is_file():
                try:
                    compare[behavior] = load_result(path)
                except ResultFormatError as exc:
                    raise RunError(f"--compare {exc}") from None
        try:
            multipliers = matched_multipliers(compare, config.method, config.budget)
        except ValueError as exc:
            raise RunError(f"--compare {root}, --budget {config.budget:g}: {exc}") from None
    truthfulqa = None
    if config.truthfulqa is not None:
        if not Path(config.truthfulqa).is_file():
            raise RunError(f"--truthfulqa {config.truthfulqa}: no such file")
        mc1, _ = load_truthfulqa(config.truthfulqa)
        truthfulqa = (mc1[: config.truthfulqa_limit], None)
    targets = {b: load_behavior(b, "test")[: config.limit] for b in dirs}
    if config.refusal and "refusal" not in targets:
        targets["refusal"] = load_behavior("refusal", "test")[: config.limit]
    vectors = {b: SteeringVector.load(p) for b, p in dirs.items()}
    model = config.load_model()
    log(f"entanglement: {', '.join(f'{b} (m = {multipliers.get(b, config.multiplier):+.3g})' for b in vectors)} on "
        f"{', '.join(f'{t} ({len(p)})' for t, p in targets.items())}" + (" and TruthfulQA MC1" if truthfulqa else ""))
    result = measure_entanglement(model, vectors, targets, multiplier=config.multiplier, multipliers=multipliers,
                          batch_size=config.batch_size, n_boot=config.n_boot, seed=config.seed, truthfulqa=truthfulqa)
    result = result.with_info(sources={b: str(p) for b, p in dirs.items()}, compare=config.compare,
                              budget=config.budget if multipliers else None, method=config.method)
    result = write_result(result, out, model)
    log(f"wrote {config.out}")
    for suffix, fig in figures_for(result).items():
        for path in save_figure(fig, Path(out).with_suffix("").parent / "figures" / f"{Path(out).stem}__{suffix}"):
            log(f"wrote {path}")
    return result


def format_entanglement(result: Any) -> str:
    """The normalised matrix of an entanglement result as a markdown table."""
    return markdown_table(entanglement_matrix(result), digits=2, index=True)


__all__ = ["EntanglementRun", "entanglement_run", "format_entanglement"]
