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

Vectors are saved under ``<out>/vectors/<behavior>/<method>`` (BiPO's ``history.json`` beside it)
and reused when the data, model and settings are unchanged; a stage whose JSON exists is skipped
unless ``force``. ``StudyConfig.quick()`` shrinks everything for a smoke test. The notebooks use
``study_vectors`` the same way, so they share trained vectors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from workbench.core.backend import Model
from workbench.core.io import atomic_write_json
from workbench.core.vector import SteeringVector

logger = logging.getLogger(__name__)

METHODS = ("bipo", "caa")
EXTRA_METHODS = ("reps", "pca")  # made for the matched-cost comparison only
STAGES = ("vectors", "eval", "compare", "sweep", "cosine", "logit_lens", "composition", "transfer",
          "lora_transfer", "refusal", "truthfulness", "figures")
KEY_FILE = "study_key.json"
HISTORY_FILE = "history.json"


@dataclass(frozen=True)
class StudyConfig:
    """What the study runs (defaults: the full study; ``quick()``: a smoke test)."""

    behaviors: tuple[str, ...] | None = None  # None: every embedded behavior (workbench.data.formats.list_behaviors)
    layer: int = 14  # layer of the main BiPO and CAA vectors
    hook: str = "resid_post"  # hook point in that block
    n_train: int | None = None  # training pairs per behavior (None: the whole train split)
    n_test: int | None = None  # held-out pairs per behavior (None: the whole test split)
    epochs: int = 5  # BiPO epochs
    batch_size: int = 4  # BiPO pairs per step
    lr: float | None = None  # BiPO learning rate (None: BiPOConfig's default)
    warmup_steps: int | None = None  # BiPO warm-up steps (None: BiPOConfig's default)
    multipliers: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)  # evaluation curve
    sweep_layers: str = "all"  # CAA sweep layers ("all" or a spec like "0-29:2")
    bipo_sweep_layers: str | None = "9,14,19"  # BiPO sweep layers (None: no BiPO sweep)
    sweep_multipliers: tuple[float, ...] = (-1.0, 1.0)
    utility_texts: int | None = None  # neutral passages for perplexity (None: all; 0: no utility)
    lens_k: int = 10  # top tokens per direction
    composition: tuple[str, ...] = ("power-seeking", "wealth-seeking")  # behaviors steered together
    composition_multiplier: float = 1.0
    transfer_offsets: tuple[int, ...] = (-6, -4, -2, 0, 2, 4, 6)
    finetune_steps: int = 20  # steps of the fine-tuned copy for model transfer (0: skip)
    n_boot: int = 1000  # bootstrap resamples of every interval
    eval_batch_size: int = 8
    seed: int = 0
    precision: str = "fp32"  # BiPO training and evaluation precision of the blocks after the vector
    ab: bool = False  # also the A/B metric (the held-out pairs as A/B questions), as the demo does
    utility_max_tokens: int = 128  # tokens per neutral passage for perplexity, agreement and KL
    # matched cost (compare_<behavior>.json): BiPO, RePS, CAA and PCA at the main layer
    compare_methods: tuple[str, ...] = ("bipo", "reps", "caa", "pca")
    budgets: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5)  # KL budgets
    compare_texts: int = 16  # neutral passages of the cost search (each probe is a forward pass on them)
    compare_max_tokens: int = 64  # tokens per passage in the cost search
    reps_epochs: int = 2  # RePS scores each batch twice (+v, -v): 2 epochs = 80 % of BiPO's 5 epochs' passes
    # refusal (refusal.json, when "refusal" is among the behaviors): held-out requests, with templates
    refusal_templates: tuple[str, ...] = ("none", "refusal_suppression", "persona")
    refusal_max_new_tokens: int = 32
    # LoRA transfer (transfer_lora.json): peft fine-tunes of the model at these KL distances
    lora_kl_targets: tuple[float, ...] = (0.1, 0.5)  # (): no LoRA transfer (it needs a Llama-style model)
    lora_max_steps: int = 400
    lora_rank: int = 8
    lora_lr: float = 1e-3
    # truthfulness (truthfulness.json): TruthfulQA's mc_task.json, a path given by the user (None: skipped)
    truthfulqa: str | None = None
    truthfulqa_test_fraction: float = 0.5  # questions held out (split by question)
    truthfulqa_pairs_per_question: int = 2  # (true, false) pairs per training question, from mc2_targets
    truthfulqa_n_train: int | None = 200  # training pairs (None: all)
    truthfulqa_n_test: int | None = 60  # held-out questions (None: all; MC1/MC2 at every multiplier is the cost)

    @classmethod
    def quick(cls) -> StudyConfig:
        """A smoke test (also the notebooks' test size): two behaviors, 4 training and 2 held-out pairs,
        one BiPO step, 3 CAA sweep layers. Its numbers only show that everything runs."""
        return cls(behaviors=("power-seeking", "wealth-seeking"), n_train=4, n_test=2, epochs=1, warmup_steps=0,
                   multipliers=(-1.0, 0.0, 1.0), sweep_layers="10,14,18", bipo_sweep_layers=None,
                   utility_texts=1, lens_k=5, transfer_offsets=(-2, 0, 2), finetune_steps=1, n_boot=100,
                   budgets=(0.05,), reps_epochs=1, refusal_max_new_tokens=4, lora_kl_targets=(0.001,),
                   lora_max_steps=10, truthfulqa_n_train=4)

    @classmethod
    def demo(cls, behavior: str = "power-seeking", quick: bool = False) -> StudyConfig:
        """The demo (``workbench demo``): one behavior's whole splits, A/B and utility on every neutral
        passage; ``quick``: 8 train / 4 test pairs, 1 epoch, 4 short passages."""
        if quick:
            return cls(behaviors=(behavior,), n_train=8, n_test=4, epochs=1, utility_texts=4, utility_max_tokens=32,
                       n_boot=200, ab=True)
        return cls(behaviors=(behavior,), utility_max_tokens=64, ab=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def bipo_config(self, layer: int | None = None) -> Any:
        from workbench.train.bipo import BiPOConfig

        kw: dict[str, Any] = {"layer": self.layer if layer is None else layer, "hook": self.hook,
                              "epochs": self.epochs, "batch_size": self.batch_size, "seed": self.seed,
                              "precision": self.precision}
        if self.lr is not None:
            kw["lr"] = self.lr
        if self.warmup_steps is not None:
            kw["warmup_steps"] = self.warmup_steps
        return BiPOConfig(**kw)

    def reps_config(self, layer: int | None = None) -> Any:
        """RePS at the same layer with BiPO's optimiser settings and ``reps_epochs`` epochs."""
        from workbench.train.reps import RePSConfig

        kw = {k: v for k, v in self.bipo_config(layer).to_dict().items() if k in RePSConfig.__dataclass_fields__}
        return RePSConfig(**{**kw, "epochs": self.reps_epochs})


# --------------------------------------------------------------------------- data and vectors
def study_pairs(behavior: str, config: StudyConfig) -> tuple[list[Any], list[Any]]:
    """``(train, test)`` pairs of an embedded behavior, cut to ``n_train``/``n_test``."""
    from workbench.data.behaviors import load_behavior

    train, test = load_behavior(behavior, "train"), load_behavior(behavior, "test")
    return train[: config.n_train], test[: config.n_test]


def _key(model: Model, behavior: str, config: StudyConfig, layer: int, train: Sequence[Any]) -> str:
    from workbench.data.pairs import fingerprint

    spec = {"model": str(model.cfg.model_name), "behavior": behavior, "data": fingerprint(train),
            "bipo": config.bipo_config(layer).to_dict()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def study_vectors(model: Model, behavior: str, config: StudyConfig, runs_dir: str | Path,
                  layer: int | None = None, progress: bool = False,
                  cells: tuple[Any, Path] | None = None) -> dict[str, SteeringVector]:
    """BiPO and CAA vectors of one behavior at one layer, loaded from ``runs_dir`` or made and saved.

    Vectors live in ``runs_dir/<behavior>/L<layer>/{bipo,caa}``; BiPO's per-step history is written
    beside its vector as ``history.json`` (``{"kind": "bipo_history", "history", "epochs"}``). A
    saved pair is reused only when model, data and BiPO settings are the same (``study_key.json``).

    With ``cells`` (``(StudySpec, root)`` of ``cells_spec``), BiPO's vector is the complete cell of
    ``config.seed`` at this layer when there is one (made by a cluster job), instead of training here.

    Returns:
        ``{"bipo": vector, "caa": vector}``.
    """
    from workbench.train.baselines import caa
    from workbench.train.bipo import train_bipo

    layer = config.layer if layer is None else layer
    train, _ = study_pairs(behavior, config)
    directory = Path(runs_dir) / behavior / f"L{layer:02d}"
    key = _key(model, behavior, config, layer, train)
    key_file = directory / KEY_FILE
    if key_file.is_file() and json.loads(key_file.read_text()).get("key") == key and all(
            (directory / m / "vector.json").is_file() for m in METHODS):
        logger.info("reusing vectors in %s", directory)
        return {m: SteeringVector.load(directory / m) for m in METHODS}
    t0 = time.perf_counter()
    cell = _bipo_cell(behavior, layer, config, cells)
    if cell is not None:
        from workbench.train.bipo import BiPOResult

        vec = SteeringVector.load(cell)
        result = BiPOResult(vec, [], [])
        logger.info("%s: BiPO vector from the cell in %s", behavior, cell)
    else:
        result = train_bipo(model, train, config.bipo_config(layer), progress=progress)
    bipo_seconds = time.perf_counter() - t0
    bipo = result.vector.replace(metadata={**result.vector.metadata, "behavior": behavior,
                                           "train_seconds": bipo_seconds})
    t0 = time.perf_counter()
    caa_vec = caa(model, train, layer, hook=config.hook, batch_size=config.eval_batch_size, progress=progress)
    caa_vec = caa_vec.replace(metadata={**caa_vec.metadata, "behavior": behavior,
                                        "train_seconds": time.perf_counter() - t0})
    bipo.save(directory / "bipo")
    caa_vec.save(directory / "caa")
    atomic_write_json({**result.to_dict(), "behavior": behavior, "layer": layer}, directory / "bipo" / HISTORY_FILE)
    atomic_write_json({"key": key, "behavior": behavior, "layer": layer, "model": str(model.cfg.model_name)},
                      key_file)
    logger.info("%s: BiPO (norm %.3g) in %.0f s, CAA (norm %.3g) at %s", behavior, bipo.norm, bipo_seconds,
                caa_vec.norm, bipo.hook_name)
    return {"bipo": bipo, "caa": caa_vec}


def study_extra_vectors(model: Model, behavior: str, config: StudyConfig, runs_dir: str | Path,
                  progress: bool = False) -> dict[str, SteeringVector]:
    """RePS and PCA vectors of one behavior at the main layer (for the matched-cost comparison), loaded
    from ``runs_dir/<behavior>/L<layer>/{reps,pca}`` or made and saved (``extra_key.json`` holds the
    settings they were made with; RePS's ``history.json`` beside its vector)."""
    from workbench.train.baselines import pca
    from workbench.data.pairs import fingerprint
    from workbench.train.reps import train_reps

    wanted = [m for m in EXTRA_METHODS if m in config.compare_methods]
    train, _ = study_pairs(behavior, config)
    directory = Path(runs_dir) / behavior / f"L{config.layer:02d}"
    spec = {"model": str(model.cfg.model_name), "behavior": behavior, "data": fingerprint(train),
            "reps": config.reps_config().to_dict()}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    key_file = directory / "extra_key.json"
    if key_file.is_file() and json.loads(key_file.read_text()).get("key") == key and all(
            (directory / m / "vector.json").is_file() for m in wanted):
        return {m: SteeringVector.load(directory / m) for m in wanted}
    out: dict[str, SteeringVector] = {}
    if "reps" in wanted:
        t0 = time.perf_counter()
        res = train_reps(model, train, config.reps_config(), progress=progress)
        out["reps"] = res.vector.replace(metadata={**res.vector.metadata, "behavior": behavior,
                                                   "train_seconds": time.perf_counter() - t0})
        out["reps"].save(directory / "reps")
        atomic_write_json({**res.to_dict(), "behavior": behavior, "layer": config.layer},
                          directory / "reps" / HISTORY_FILE)
    if "pca" in wanted:
        out["pca"] = pca(model, train, config.layer, hook=config.hook, batch_size=config.eval_batch_size)
        out["pca"] = out["pca"].replace(metadata={**out["pca"].metadata, "behavior": behavior})
        out["pca"].save(directory / "pca")
    atomic_write_json({"key": key, "behavior": behavior, "layer": config.layer}, key_file)
    logger.info("%s: %s", behavior, ", ".join(f"{m} norm {v.norm:.3g}" for m, v in out.items()))
    return out


def cells_spec(config: StudyConfig, behaviors: Sequence[str], seeds: Sequence[int], model: str | None = None,
               device: str = "cpu", dtype: str = "fp32") -> Any:
    """The study's BiPO vectors as cells (``workbench.studies.cells``): every behavior at the main layer and the
    BiPO sweep layers, for every seed; their aggregate is ``seeds.json`` (mean and spread over seeds)."""
    from workbench.studies.cells import StudySpec
    from workbench.analysis.sweep import parse_layers

    layers = {config.layer} | (set(parse_layers(config.bipo_sweep_layers)) if config.bipo_sweep_layers else set())
    bipo = {k: v for k, v in config.bipo_config().to_dict().items() if k not in ("layer", "hook", "seed")}
    return StudySpec(data=tuple(behaviors), method="bipo", layers=tuple(sorted(layers)), seeds=tuple(seeds),
                     model=model, device=device, dtype=dtype, hook=config.hook,
                     multipliers=tuple(config.sweep_multipliers), n_train=config.n_train, n_test=config.n_test,
                     bipo=bipo, batch_size=config.eval_batch_size)


def _bipo_cell(behavior: str, layer: int, config: StudyConfig, cells: tuple[Any, Path] | None) -> Path | None:
    if cells is None:
        return None
    from workbench.studies.cells import Cell, is_complete

    spec, root = cells
    cell = Cell(behavior, "bipo", layer, config.seed)
    return cell.directory(root) if layer in spec.layers and is_complete(spec, cell, root) else None


# --------------------------------------------------------------------------- stages
def eval_stage(model: Model, behavior: str, vectors: dict[str, SteeringVector],
               config: StudyConfig, progress: bool = False) -> dict[str, Any]:
    """Held-out log-odds (and utility) curves of BiPO vs CAA for one behavior (``evaluate_vectors``)."""
    from workbench.data.pairs import as_ab_pairs
    from workbench.data.behaviors import load_neutral_text
    from workbench.data.pairs import is_ab_data
    from workbench.evaluate.suite import evaluate_vectors

    _, test = study_pairs(behavior, config)
    metrics = ["logodds"] + (["ab"] if config.ab else []) + (["utility"] if config.utility_texts != 0 else [])
    texts = load_neutral_text()[: config.utility_texts] if config.utility_texts else None
    # A/B (CAA's protocol): the held-out pairs as A/B questions, the matching answer (A) for half of them
    ab_pairs = None if not config.ab or is_ab_data(test) else as_ab_pairs(test)
    result = evaluate_vectors(model, vectors, test, config.multipliers, metrics=metrics, neutral_texts=texts,
                              ab_pairs=ab_pairs, precision=config.precision,
                              utility_max_tokens=config.utility_max_tokens, batch_size=config.eval_batch_size,
                              n_boot=config.n_boot, seed=config.seed, data_info={"behavior": behavior, "split": "test"},
                              progress=progress)
    return {**result, "behavior": behavior}


def _neutral(config: StudyConfig, at_least_one: bool = False, cap: int | None = None) -> list[str]:
    """The neutral passages of the utility cost: the first ``utility_texts`` (None: all; 0: none, or the
    first one where a cost is needed, as in the matched-cost search), and at most ``cap``."""
    from workbench.data.behaviors import load_neutral_text

    n = config.utility_texts
    if n is not None and at_least_one:
        n = max(n, 1)
    if cap is not None:
        n = cap if n is None else min(n, cap)
    return load_neutral_text()[:n]


def compare_stage(model: Model, behavior: str, vectors: dict[str, SteeringVector],
                  config: StudyConfig) -> dict[str, Any]:
    """The matched-cost comparison of ``vectors`` on the behavior's held-out pairs: at each KL budget
    on neutral text, both directions, the log-odds shift (``workbench.analysis.equal_cost``)."""
    from workbench.analysis.equal_cost import matched_cost

    _, test = study_pairs(behavior, config)
    used = {m: vectors[m] for m in config.compare_methods if m in vectors}
    texts = _neutral(config, at_least_one=True, cap=config.compare_texts)
    res = matched_cost(model, used, test, texts, cost="kl", budgets=config.budgets,
                       n_boot=config.n_boot, seed=config.seed,
                       utility_kw={"max_tokens": min(config.compare_max_tokens, config.utility_max_tokens),
                                                     "batch_size": config.eval_batch_size,
                                                     "precision": config.precision},
                       logodds_kw={"batch_size": config.eval_batch_size, "precision": config.precision})
    return {**res, "behavior": behavior, "data": {"behavior": behavior, "split": "test"}}


def refusal_stage(model: Model, vectors: dict[str, SteeringVector], config: StudyConfig) -> dict[str, Any]:
    """Refusal rate, likelihood signal and utility cost of the refusal vectors on the held-out requests,
    plain and inside ``config.refusal_templates`` (``workbench.studies.refusal.refusal_study``)."""
    from workbench.data.refusal import load_refusal_requests
    from workbench.studies.refusal import refusal_study

    requests = load_refusal_requests("test")[: config.n_test]
    res = refusal_study(model, {m: vectors[m] for m in METHODS}, requests, config.multipliers,
                        templates=[None if t == "none" else t for t in config.refusal_templates],
                        max_new_tokens=config.refusal_max_new_tokens, n_boot=config.n_boot, seed=config.seed,
                        batch_size=config.eval_batch_size, neutral_texts=_neutral(config) or None,
                        utility_max_tokens=config.utility_max_tokens)
    return {**res, "data": {"behavior": "refusal", "split": "test"}}


def truthfulness_stage(model: Model, config: StudyConfig, runs_dir: Path,
                       progress: bool = False) -> dict[str, Any] | None:
    """A truthfulness vector (BiPO and CAA at the main layer) from TruthfulQA's ``mc2_targets`` pairs of
    the training questions, evaluated by MC1/MC2 (and held-out log-odds and utility) over multipliers on
    questions it never saw (``workbench.studies.truthfulness``). None without ``config.truthfulqa``."""
    if config.truthfulqa is None:
        logger.info("truthfulness: no TruthfulQA file (StudyConfig.truthfulqa / --truthfulqa); skipped")
        return None
    from workbench.studies.truthfulness import truthfulness_study

    return truthfulness_study(model, config.truthfulqa, runs_dir / "truthfulness", config.bipo_config(),
                              test_fraction=config.truthfulqa_test_fraction,
                              pairs_per_question=config.truthfulqa_pairs_per_question,
                              n_train=config.truthfulqa_n_train,
                              n_test=config.truthfulqa_n_test if config.n_test is None else config.n_test,
                              multipliers=config.multipliers, neutral_texts=_neutral(config) or None,
                              utility_max_tokens=config.utility_max_tokens, batch_size=config.eval_batch_size,
                              n_boot=config.n_boot, seed=config.seed, progress=progress)


def lora_transfer_stage(model: Model, behavior: str, vectors: dict[str, SteeringVector], config: StudyConfig,
                        out_dir: Path, progress: bool = False) -> dict[str, Any]:
    """BiPO and CAA vectors carried to LoRA fine-tunes of the model at ``config.lora_kl_targets``, and
    vectors made on each fine-tune carried back (``workbench.studies.lora``)."""
    from workbench.studies.lora import lora_transfer

    train, test = study_pairs(behavior, config)
    res = lora_transfer(model, {m: vectors[m] for m in METHODS}, train, test, out_dir / "finetunes",
                        kl_targets=config.lora_kl_targets, bipo_config=config.bipo_config(),
                        neutral_texts=_neutral(config, at_least_one=True), max_steps=config.lora_max_steps, rank=config.lora_rank,
                        lr=config.lora_lr, utility_max_tokens=config.utility_max_tokens,
                        batch_size=config.eval_batch_size, n_boot=config.n_boot, seed=config.seed, progress=progress)
    return {**res, "behavior": behavior}


def study_sweeps(model: Model, behavior: str, config: StudyConfig, runs_dir: str | Path,
                 cells: tuple[Any, Path] | None = None) -> dict[str, Any]:
    """CAA at every sweep layer and BiPO (``study_vectors``, cached in ``runs_dir``) at a few.

    Returns:
        ``{"caa": SweepResult, "bipo": SweepResult}`` (no ``"bipo"`` without ``bipo_sweep_layers``);
        BiPO's ``cos_ref`` is its cosine to the CAA vector of the same layer.
    """
    from workbench.analysis.sweep import layer_sweep, parse_layers

    train, test = study_pairs(behavior, config)
    common = dict(multipliers=config.sweep_multipliers, hook=config.hook, batch_size=config.eval_batch_size)
    out = {"caa": layer_sweep(model, train, test, config.sweep_layers, method="caa", **common)}
    if config.bipo_sweep_layers:
        layers = parse_layers(config.bipo_sweep_layers, model.cfg.n_layers)
        bipo = {layer: study_vectors(model, behavior, config, runs_dir, layer=layer, cells=cells)["bipo"]
                for layer in layers}
        caa_ref = {layer: out["caa"].vectors[layer] for layer in layers if layer in out["caa"].vectors}
        out["bipo"] = layer_sweep(model, train, test, layers, method="bipo", vectors=bipo,
                                  reference=caa_ref or None, **common)
    return out


def sweep_stage(model: Model, behavior: str, config: StudyConfig, runs_dir: Path,
                cells: tuple[Any, Path] | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``study_sweeps`` as results: one ``sweep`` (rows of both methods) and BiPO's per-layer cosine
    to CAA (``cosine_methods``), or None without a BiPO sweep."""
    from workbench.core.results import COSINE_METHODS, SWEEP, result
    from workbench.analysis.similarity import method_cosines

    sweeps = study_sweeps(model, behavior, config, runs_dir, cells)
    rows = [dict(r, method=m) for m, s in sweeps.items() for r in s.records()]
    cosines = None
    if "bipo" in sweeps:
        caa_ref = {k: v for k, v in sweeps["caa"].vectors.items() if k in sweeps["bipo"].vectors}
        if caa_ref:
            table = method_cosines({k: sweeps["bipo"].vectors[k] for k in caa_ref}, caa_ref, names=("bipo", "caa"))
            cosines = result(COSINE_METHODS, behavior=behavior, rows=table)
    info = {k: v for k, v in sweeps["caa"].info.items() if k not in ("method", "layers")}
    return result(SWEEP, behavior=behavior, **info, rows=rows), cosines


def cosine_stage(vectors: dict[str, dict[str, SteeringVector]]) -> dict[str, Any]:
    """Cosines between every (method, behavior) vector: a square ``cosine`` result."""
    from workbench.analysis.similarity import cosine_table, table_to_dict

    labelled = {f"{m}:{b}": vecs[m] for m in METHODS for b, vecs in vectors.items()}
    return table_to_dict(cosine_table(labelled))


def logit_lens_stage(model: Model, behavior: str, vectors: dict[str, SteeringVector],
                     config: StudyConfig) -> dict[str, dict[str, Any]]:
    """Top tokens of each vector (one result) and the steered per-layer lens of each (one per method)."""
    from workbench.analysis.logit_lens import lens_to_dict, steered_logit_lens, vector_logit_lens
    from workbench.core.results import LOGIT_LENS_LAYERS, LOGIT_LENS_TOKENS

    _, test = study_pairs(behavior, config)
    tokens = vector_logit_lens(model, vectors, k=config.lens_k)
    out = {f"logit_lens_tokens_{behavior}": lens_to_dict(tokens, LOGIT_LENS_TOKENS, behavior=behavior)}
    for m, v in vectors.items():
        layers = steered_logit_lens(model, v, test, multiplier=1.0, batch_size=config.eval_batch_size)
        out[f"logit_lens_layers_{behavior}_{m}"] = lens_to_dict(layers, LOGIT_LENS_LAYERS, behavior=behavior,
                                                                vector=m, multiplier=1.0, title=f"{m}, m = +1")
    return out


def composition_stage(model: Model, vectors: dict[str, dict[str, SteeringVector]],
                      config: StudyConfig) -> dict[str, Any] | None:
    """The BiPO vectors of ``config.composition`` applied together: a ``composition`` result."""
    from workbench.analysis.composition import composition_table

    names = [b for b in config.composition if b in vectors]
    if len(names) < 2:
        logger.info("composition needs two of %s among the study's behaviors; skipped", config.composition)
        return None
    vecs = {b: vectors[b]["bipo"] for b in names}
    pairs = {b: study_pairs(b, config)[1] for b in names}
    result = composition_table(model, vecs, pairs, multipliers=config.composition_multiplier,
                               batch_size=config.eval_batch_size)
    return result.to_dict(method="bipo")


def transfer_stage(model: Model, behavior: str, vector: SteeringVector,
                   config: StudyConfig) -> dict[str, dict[str, Any]]:
    """BiPO vector moved across layers, and applied to a fine-tuned copy of the model."""
    from workbench.data.behaviors import load_neutral_text
    from workbench.core.results import TRANSFER_LAYERS, TRANSFER_MODEL
    from workbench.analysis.transfer import finetune_copy, layer_transfer, transfer_effect, transfer_to_dict

    _, test = study_pairs(behavior, config)
    plus = [m for m in config.sweep_multipliers if m > 0] or [1.0]
    out = {"transfer_layers": transfer_to_dict(
        layer_transfer(model, vector, test, offsets=config.transfer_offsets, multipliers=plus,
                       batch_size=config.eval_batch_size), kind=TRANSFER_LAYERS, behavior=behavior, method="bipo")}
    if config.finetune_steps > 0:
        target, losses = finetune_copy(model, load_neutral_text(), steps=config.finetune_steps, seed=config.seed,
                                       train_last=min(4, model.cfg.n_layers))
        table = transfer_effect(model, target, vector, test, multipliers=config.sweep_multipliers,
                                batch_size=config.eval_batch_size)
        out["transfer_model"] = transfer_to_dict(table, kind=TRANSFER_MODEL, behavior=behavior, method="bipo",
                                                 source=str(model.cfg.model_name), target=str(target.cfg.model_name),
                                                 finetune_losses=losses)
        del target
    return out


# --------------------------------------------------------------------------- the demo
def demo(out_dir: str | Path, config: StudyConfig, *, model: Model | None = None,
         progress: bool = True) -> dict[str, Any]:
    """The main job: BiPO and CAA of ``config.behaviors[0]`` (``study_vectors``, under ``out_dir/vectors``),
    evaluated on its held-out pairs (``eval_stage``); writes ``out_dir/eval.json`` and ``logodds.png``.

    Returns:
        The eval result, with ``"demo"``: the behavior, pair counts, BiPO settings and seconds per step.
    """
    from workbench.core.loading import load_model
    from workbench.viz.plots import plot_multiplier_curves, save_figure

    t_start = time.perf_counter()
    out = Path(out_dir)
    behavior = (config.behaviors or ("power-seeking",))[0]
    model = model if model is not None else load_model()
    t0 = time.perf_counter()
    vectors = study_vectors(model, behavior, config, out / "vectors", progress=progress)
    t_vectors = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = eval_stage(model, behavior, vectors, config, progress=progress)
    train, test = study_pairs(behavior, config)
    result["demo"] = {"behavior": behavior, "n_train": len(train), "n_test": len(test),
                      "bipo_config": config.bipo_config().to_dict(), "config": config.to_dict(),
                      "seconds": {"vectors": round(t_vectors, 1), "eval": round(time.perf_counter() - t0, 1),
                                  "total": round(time.perf_counter() - t_start, 1)}}
    atomic_write_json(result, out / "eval.json")
    fig = plot_multiplier_curves(result, metric="logodds", title=f"{behavior}: held-out log-odds")
    save_figure(fig, out / "logodds", formats=("png",), dpi=150)
    return result


# --------------------------------------------------------------------------- the whole study
def reproduce(out_dir: str | Path, config: StudyConfig | None = None, *, model: Model | None = None,
              figures_dir: str | Path | None = None, stages: Sequence[str] = STAGES, force: bool = False,
              progress: bool = False, log: Callable[[str], None] | None = None, executor: str = "inline",
              seeds: Sequence[int] | None = None, cells_model: tuple[str | None, str, str] = (None, "cpu", "fp32"),
              slurm: Any = None) -> dict[str, Any]:
    """Run the study into ``out_dir`` (see the module docstring) and draw its figures.

    With ``executor`` other than ``"inline"`` or several ``seeds``, the BiPO vectors are first made as
    cells (``cells_spec``: every behavior, the main and the BiPO sweep layers, every seed) by that
    executor, each job loading ``cells_model`` (name or directory, device, dtype); a killed study
    resubmitted runs only the missing cells. ``seeds.json`` aggregates them over seeds; the stages use
    the vectors of ``config.seed``.

    Args:
        out_dir: results directory (JSON results, ``vectors/``, ``summary.json``).
        config: what to run (default ``StudyConfig()``; ``StudyConfig.quick()`` for a smoke test).
        model: the model (default: the embedded SmolLM2-135M-Instruct).
        figures_dir: where figures go (default ``<out_dir>/figures``).
        stages: a subset of ``STAGES`` (vectors are always made or loaded).
        force: recompute stages whose JSON already exists.
        log: called with one line per finished stage (the CLI prints them).

    Returns:
        The summary written to ``summary.json``: config, seconds per stage, files written.
    """
    from workbench.data.behaviors import list_behaviors
    from workbench.core.loading import load_model

    config = config or StudyConfig()
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; valid: {', '.join(STAGES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures_dir = Path(figures_dir) if figures_dir is not None else out / "figures"
    behaviors = list(config.behaviors or list_behaviors())
    missing = [b for b in behaviors if b not in list_behaviors()]
    if missing:
        raise ValueError(f"unknown behavior(s) {missing}; embedded: {list_behaviors()}")
    say = log or (lambda line: logger.info("%s", line))
    seconds: dict[str, float] = {}
    written: list[str] = []

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        value = fn()
        seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - t0, 2)
        say(f"{name}: {time.perf_counter() - t0:.0f} s")
        return value

    def save(name: str, result: dict[str, Any] | None) -> None:
        if result is not None:
            written.append(str(atomic_write_json(result, out / f"{name}.json")))

    def todo(stage: str, *names: str) -> bool:
        return stage in stages and (force or not all((out / f"{n}.json").is_file() for n in names))

    t_start = time.perf_counter()
    seeds = tuple(seeds) if seeds else (config.seed,)
    cells = None
    load = lambda: model if model is not None else load_model(  # noqa: E731
        cells_model[0], device=cells_model[1], dtype=cells_model[2])
    if executor == "inline":
        model = timed("load_model", load)
    if executor != "inline" or len(seeds) > 1:
        from workbench.studies.cells import SlurmOptions, aggregate, run_study

        if config.seed not in seeds:
            raise ValueError(f"seeds={list(seeds)} must include the study's seed {config.seed}")
        spec = cells_spec(config, behaviors, seeds, *cells_model)
        inline_model = model if executor == "inline" else None
        timed("cells", lambda: run_study(spec, out, executor=executor, model=inline_model,
                                         slurm=slurm or SlurmOptions()))
        save("seeds", aggregate(spec, out))
        cells = (spec, out)
    if executor != "inline":
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
            extra = timed(f"vectors_extra:{b}", lambda b=b: study_extra_vectors(model, b, config, runs, progress=progress))
            save(f"compare_{b}", timed(f"compare:{b}", lambda b=b, extra=extra: compare_stage(
                model, b, {**vectors[b], **extra}, config)))
    if todo("sweep", f"sweep_{first}"):
        sweep, cosines = timed("sweep", lambda: sweep_stage(model, first, config, runs, cells))
        save(f"sweep_{first}", sweep)
        save(f"cosine_methods_{first}", cosines)
    if todo("cosine", "cosine"):
        save("cosine", timed("cosine", lambda: cosine_stage(vectors)))
    if todo("logit_lens", f"logit_lens_tokens_{first}"):
        for name, result in timed("logit_lens", lambda: logit_lens_stage(model, first, vectors[first], config)).items():
            save(name, result)
    if todo("composition", "composition"):
        save("composition", timed("composition", lambda: composition_stage(model, vectors, config)))
    if todo("transfer", "transfer_layers"):
        for name, result in timed("transfer", lambda: transfer_stage(model, first, vectors[first]["bipo"],
                                                                     config)).items():
            save(name, result)
    if config.lora_kl_targets and todo("lora_transfer", "transfer_lora"):
        save("transfer_lora", timed("lora_transfer", lambda: lora_transfer_stage(model, first, vectors[first], config,
                                                                                   out, progress=progress)))
    if "refusal" in behaviors and todo("refusal", "refusal"):
        save("refusal", timed("refusal", lambda: refusal_stage(model, vectors["refusal"], config)))
    if todo("truthfulness", "truthfulness"):
        save("truthfulness", timed("truthfulness", lambda: truthfulness_stage(model, config, runs, progress)))
    figures: list[str] = []
    if "figures" in stages:
        from workbench.viz.figures import write_figures

        figures = [str(p) for p in timed("figures", lambda: write_figures(out, figures_dir))]
    from workbench.core.results import STUDY_SUMMARY, result

    previous = out / "summary.json"  # every stage's latest time, across runs of some stages
    all_seconds = dict(seconds)
    if previous.is_file():
        old = json.loads(previous.read_text())
        all_seconds = {**old.get("all_seconds", old.get("seconds", {})), **seconds}
    summary = result(STUDY_SUMMARY, model=str(model.cfg.model_name), config=config.to_dict(),
                     behaviors=behaviors, seconds=seconds, all_seconds=all_seconds, total_seconds=round(time.perf_counter() - t_start, 1),
                     results=written, figures=figures,
                     vectors={b: {m: {"norm": v.norm, "hook_name": v.hook_name, **{k: v.metadata.get(k) for k in (
                         "final_loss", "final_accuracy", "train_seconds") if k in v.metadata}}
                                  for m, v in vecs.items()} for b, vecs in vectors.items()})
    atomic_write_json(summary, out / "summary.json")
    return summary
