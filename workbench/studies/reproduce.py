"""Reproduce the whole study on the embedded model and data: vectors, analyses, figures.

The study follows BiPO (Cao et al. 2024, arXiv 2406.00045) on a small scale: for each embedded
behavior a BiPO vector and a CAA mean-difference vector (Rimsky et al. 2023, arXiv 2312.06681) at
the same layer, then

1. ``eval_<behavior>.json``: held-out log-odds and utility (perplexity, agreement, KL) over
   multipliers (``workbench.evaluate.suite``);
2. ``sweep_<behavior>.json``: a layer sweep of CAA at every layer and BiPO at a few (``workbench.analysis.sweep``),
   with BiPO's cosine to CAA at each layer (``cosine_methods_<behavior>.json``);
3. ``cosine.json``: cosines between every method and behavior (``workbench.analysis.similarity``);
4. ``logit_lens_*.json``: top tokens of each vector and the per-layer propagation of a steered run
   (``workbench.analysis.logit_lens``);
5. ``composition.json``: two behaviors' vectors applied together (``workbench.analysis.composition``);
6. ``transfer_layers.json`` and ``transfer_model.json``: the BiPO vector moved to other layers and
   applied to a briefly fine-tuned copy of the model (``workbench.analysis.transfer``);
7. figures of all of these (``workbench.viz.figures.write_figures``).

Vectors are saved under ``<out>/vectors/<behavior>/L<layer>/<method>`` (BiPO's ``history.json``
beside it) and reused when the data, model and settings are unchanged (``workbench.studies.vectors``);
a stage whose JSON exists is skipped unless ``force``. ``StudyConfig.quick()`` shrinks everything for
a smoke test (``workbench.studies.config``). The stages themselves are ``workbench.studies.stages``;
this module is the driver: ``reproduce`` runs them in order, ``demo`` runs the first two for one
behavior.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from workbench.core.backend import Model
from workbench.core.io import atomic_write_json
from workbench.core.loading import load_model
from workbench.core.options import with_options
from workbench.core.prompts import prompt_format
from workbench.core.results import STUDY_SUMMARY, Result, result
from workbench.data.behaviors import list_behaviors
from workbench.studies.cells import SlurmOptions, aggregate, run_study
from workbench.studies.config import ExecutionConfig, StudyConfig
from workbench.studies.stages import (compare_stage, composition_stage, conditional_stage, cosine_stage,
                                      entanglement_stage, eval_stage, logit_lens_stage, lora_transfer_stage,
                                      mechanism_stage, prompting_stage, refusal_stage, study_sweeps, sweep_stage,
                                      transfer_stage, truthfulness_stage)
from workbench.studies.vectors import cells_spec, study_extra_vectors, study_pairs, study_vectors
from workbench.viz import plot_multiplier_curves, save_figure, write_figures

logger = logging.getLogger(__name__)

STAGES = ("vectors", "eval", "compare", "sweep", "cosine", "logit_lens", "composition", "transfer",
          "lora_transfer", "refusal", "truthfulness", "prompting", "entanglement", "conditional", "mechanism",
          "figures")
#: run only when asked for (``stages=``, ``--stages``): the reviewer's questions and the mechanism of the first
#: behavior's vectors, each reading the compare stage's results where they are on disk
OPT_IN_STAGES = ("prompting", "entanglement", "conditional", "mechanism")
DEFAULT_STAGES = tuple(s for s in STAGES if s not in OPT_IN_STAGES)


# --------------------------------------------------------------------------- the demo
def demo(out_dir: str | Path, config: StudyConfig, *, model: Model | None = None,
         progress: bool = True) -> dict[str, Any]:
    """The main job: BiPO and CAA of ``config.behaviors[0]`` (``study_vectors``, under ``out_dir/vectors``),
    evaluated on its held-out pairs (``eval_stage``); writes ``out_dir/eval.json`` and ``logodds.png``.

    Args:
        out_dir: where the result, the figure and the vectors go.
        config: what to run (``StudyConfig.demo()``).
        model: the model (default: the embedded SmolLM2-135M-Instruct).
        progress: show progress bars.

    Returns:
        The eval result, with ``"demo"``: the behavior, pair counts, BiPO settings and seconds per step.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    behavior = (config.behaviors or ("power-seeking",))[0]
    model = model if model is not None else load_model()
    t0 = time.perf_counter()
    vectors = study_vectors(model, behavior, config, out / "vectors", progress=progress)
    t_vectors = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = eval_stage(model, behavior, vectors, config, progress=progress)
    train, test = study_pairs(behavior, config)
    res["demo"] = {"behavior": behavior, "n_train": len(train), "n_test": len(test),
                   "bipo_config": config.bipo_config().to_dict(), "config": config.to_dict(),
                   "seconds": {"vectors": round(t_vectors, 1), "eval": round(time.perf_counter() - t0, 1),
                               "total": round(time.perf_counter() - t_start, 1)}}
    res.setdefault("model", str(model.cfg.model_name))
    res["prompt_format"] = prompt_format(model)  # the layout of every prompt above (BiPO's system prompt)
    atomic_write_json(res, out / "eval.json")
    fig = plot_multiplier_curves(res, metric="logodds", title=f"{behavior}: held-out log-odds")
    save_figure(fig, out / "logodds", formats=("png",), dpi=150)
    return res


# --------------------------------------------------------------------------- the whole study
def reproduce(out_dir: str | Path, config: StudyConfig | None = None, *, model: Model | None = None,
              figures_dir: str | Path | None = None, stages: Sequence[str] = DEFAULT_STAGES, force: bool = False,
              progress: bool = False, log: Callable[[str], None] | None = None,
              execution: ExecutionConfig | None = None, **options: Any) -> Result:
    """Run the study into ``out_dir`` (see the module docstring) and draw its figures.

    With an executor other than ``"inline"`` or several seeds (``ExecutionConfig``), the BiPO vectors
    are first made as cells (``cells_spec``: every behavior, the main and the BiPO sweep layers, every
    seed) by that executor, each job loading ``cells_model`` (name or directory, device, dtype); a
    killed study resubmitted runs only the missing cells. ``seeds.json`` aggregates them over seeds;
    the stages use the vectors of ``config.seed``.

    Args:
        out_dir: results directory (JSON results, ``vectors/``, ``summary.json``).
        config: what to run (default ``StudyConfig()``; ``StudyConfig.quick()`` for a smoke test).
        model: the model (default: the embedded SmolLM2-135M-Instruct, or ``cells_model``).
        figures_dir: where figures go (default ``<out_dir>/figures``).
        stages: a subset of ``STAGES`` (vectors are always made or loaded); default ``DEFAULT_STAGES``, every
            stage but the ``OPT_IN_STAGES`` (prompting, entanglement, conditional, mechanism).
        force: recompute stages whose JSON already exists.
        progress: show training progress bars.
        log: called with one line per finished stage (the CLI prints them).
        execution: how the BiPO vectors are made (default ``ExecutionConfig()``: in this process).
        **options: fields of ``ExecutionConfig`` (``executor``, ``seeds``, ``cells_model``, ``slurm``).

    Returns:
        The summary written to ``summary.json`` (kind ``study_summary``): config, seconds per stage,
        files written.

    Raises:
        ValueError: an unknown stage or behavior, or seeds without the study's seed.
        TypeError: an unknown option.
    """
    config = config or StudyConfig()
    execution = with_options(ExecutionConfig, execution, options, "reproduce")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; valid: {', '.join(STAGES)}")
    behaviors = list(config.behaviors or list_behaviors())
    missing = [b for b in behaviors if b not in list_behaviors()]
    if missing:
        raise ValueError(f"unknown behavior(s) {missing}; embedded: {list_behaviors()}")
    seeds = execution.seeds or (config.seed,)
    if config.seed not in seeds:
        raise ValueError(f"seeds={list(seeds)} must include the study's seed {config.seed}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures_dir = Path(figures_dir) if figures_dir is not None else out / "figures"
    say = log or (lambda line: logger.info("%s", line))
    seconds: dict[str, float] = {}
    written: list[str] = []

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        value = fn()
        seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - t0, 2)
        say(f"{name}: {time.perf_counter() - t0:.0f} s")
        return value

    def save(name: str, res: dict[str, Any] | None) -> None:
        if res is not None:
            written.append(str(atomic_write_json(res, out / f"{name}.json")))

    def todo(stage: str, *names: str) -> bool:
        return stage in stages and (force or not all((out / f"{n}.json").is_file() for n in names))

    t_start = time.perf_counter()
    name, device, dtype = execution.cells_model
    load = lambda: model if model is not None else load_model(name, device=device, dtype=dtype)  # noqa: E731
    inline = execution.executor == "inline"
    if inline:
        model = timed("load_model", load)
    cells = None
    if not inline or len(seeds) > 1:
        spec = cells_spec(config, behaviors, seeds, name, device, dtype)
        timed("cells", lambda: run_study(spec, out, executor=execution.executor, model=model if inline else None,
                                         slurm=execution.slurm or SlurmOptions()))
        save("seeds", aggregate(spec, out))
        cells = (spec, out)
    if not inline:
        model = timed("load_model", load)
    runs = out / "vectors"
    vectors = {b: timed(f"vectors:{b}", lambda b=b: study_vectors(model, b, config, runs, progress=progress,
                                                                  cells=cells))
               for b in behaviors}
    first = behaviors[0]
    for b in behaviors:
        if todo("eval", f"eval_{b}"):
            save(f"eval_{b}", timed(f"eval:{b}", lambda b=b: eval_stage(model, b, vectors[b], config)))
    for b in behaviors:
        if todo("compare", f"compare_{b}"):
            extra = timed(f"vectors_extra:{b}", lambda b=b: study_extra_vectors(model, b, config, runs,
                                                                                progress=progress))
            save(f"compare_{b}", timed(f"compare:{b}", lambda b=b, extra=extra: compare_stage(
                model, b, {**vectors[b], **extra}, config)))
    if todo("sweep", f"sweep_{first}"):
        sweep, cosines = timed("sweep", lambda: sweep_stage(model, first, config, runs, cells))
        save(f"sweep_{first}", sweep)
        save(f"cosine_methods_{first}", cosines)
    if todo("cosine", "cosine"):
        save("cosine", timed("cosine", lambda: cosine_stage(vectors)))
    if todo("logit_lens", f"logit_lens_tokens_{first}"):
        for key, res in timed("logit_lens", lambda: logit_lens_stage(model, first, vectors[first], config)).items():
            save(key, res)
    if todo("composition", "composition"):
        save("composition", timed("composition", lambda: composition_stage(model, vectors, config)))
    if todo("transfer", "transfer_layers"):
        for key, res in timed("transfer", lambda: transfer_stage(model, first, vectors[first]["bipo"],
                                                                 config)).items():
            save(key, res)
    if config.lora_kl_targets and todo("lora_transfer", "transfer_lora"):
        save("transfer_lora", timed("lora_transfer", lambda: lora_transfer_stage(model, first, vectors[first], config,
                                                                                   out, progress=progress)))
    if "refusal" in behaviors and todo("refusal", "refusal"):
        save("refusal", timed("refusal", lambda: refusal_stage(model, vectors["refusal"], config)))
    if todo("truthfulness", "truthfulness"):
        save("truthfulness", timed("truthfulness", lambda: truthfulness_stage(model, config, runs, progress)))
    compares = {b: json.loads((out / f"compare_{b}.json").read_text()) for b in behaviors
                if (out / f"compare_{b}.json").is_file()}
    for b in behaviors:
        if todo("prompting", f"prompting_{b}"):
            save(f"prompting_{b}", timed(f"prompting:{b}", lambda b=b: prompting_stage(
                model, b, vectors[b], config, compares.get(b))))
    if todo("entanglement", "entanglement"):
        save("entanglement", timed("entanglement", lambda: entanglement_stage(model, vectors, config, compares)))
    if todo("conditional", f"conditional_{first}"):
        save(f"conditional_{first}", timed("conditional", lambda: conditional_stage(model, first, vectors[first],
                                                                                      config)))
    if todo("mechanism", f"mechanism_{first}_bipo_attribution_patching"):
        for key, res in timed("mechanism", lambda: mechanism_stage(model, first, vectors[first], config)).items():
            save(key, res)
    figures: list[str] = []
    if "figures" in stages:
        figures = [str(p) for p in timed("figures", lambda: write_figures(out, figures_dir))]
    previous = out / "summary.json"  # every stage's latest time, across runs of some stages
    all_seconds = dict(seconds)
    if previous.is_file():
        old = json.loads(previous.read_text())
        all_seconds = {**old.get("all_seconds", old.get("seconds", {})), **seconds}
    # every stage's prompts are BiPO's chat layout with its system prompt: one record for all of them
    summary = result(STUDY_SUMMARY, model=str(model.cfg.model_name), prompt_format=prompt_format(model),
                     config=config.to_dict(),
                     behaviors=behaviors, seconds=seconds, all_seconds=all_seconds,
                     total_seconds=round(time.perf_counter() - t_start, 1), results=written, figures=figures,
                     vectors={b: {m: {"norm": v.norm, "hook_name": v.hook_name, **{k: v.metadata.get(k) for k in (
                         "final_loss", "final_accuracy", "train_seconds") if k in v.metadata}}
                                  for m, v in vecs.items()} for b, vecs in vectors.items()})
    summary.save(out / "summary.json")
    return summary


# re-exported for ``workbench.__init__`` (whose table names this module) until it names their modules
__all__ = ["DEFAULT_STAGES", "OPT_IN_STAGES", "STAGES", "StudyConfig", "demo", "reproduce", "study_extra_vectors", "study_pairs", "study_sweeps",
           "study_vectors"]
