"""What a study runs: one config dataclass per study, and ``StudyConfig`` for the whole reproduction.

The reproduction follows BiPO (Cao et al. 2024, arXiv 2406.00045) on a small scale. Its options are
one flat, frozen ``StudyConfig`` whose fields are grouped by stage (the main vectors, evaluation, the
layer sweep, the logit lens, composition, transfer, matched cost, refusal, LoRA transfer,
truthfulness); the field names are those of ``results/full/summary.json``, so a saved study's
``config`` reads back as it is. Each stage that calls a study function hands it that study's own
config, derived from the ``StudyConfig`` by one method:

* ``bipo_config`` / ``reps_config``: the trainers' configs (``workbench.train``);
* ``refusal_config``: ``RefusalConfig`` of ``workbench.studies.refusal.refusal_study``;
* ``truthfulness_config``: ``TruthfulnessConfig`` of ``workbench.studies.truthfulness.truthfulness_study``;
* ``lora_config``: ``LoRATransferConfig`` of ``workbench.studies.lora.lora_transfer`` (whose
  ``finetune_config`` is the ``LoRAFinetuneConfig`` of ``lora_finetunes``).

``ExecutionConfig`` says how ``reproduce`` makes its BiPO vectors: in this process, or as cells
dispatched by an executor (``workbench.studies.cells``). Every config is validated in
``__post_init__`` (a one-line ``ValueError`` naming the field) and has ``to_dict``, as SAELens'
configs do. The study functions take ``config=None, **options`` where the options are the config's
fields (``workbench.core.options.with_options``), so keyword calls written before the configs keep working.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from workbench.studies.cells import EXECUTORS, SlurmOptions
from workbench.train.bipo import BiPOConfig
from workbench.train.reps import RePSConfig


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _at_least(obj: Any, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _check(value is None or value >= minimum, f"{name}={value}: must be >= {minimum}")


def _positive(values: Sequence[float], name: str) -> None:
    _check(all(math.isfinite(v) and v > 0 for v in values), f"{name}={list(values)}: give positive numbers")


def _tuple(obj: Any, *names: str) -> None:
    """Sequences given as lists stored as tuples (configs are frozen and hashable)."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, list):
            object.__setattr__(obj, name, tuple(value))


# --------------------------------------------------------------------------- the studies' own configs
@dataclass(frozen=True)
class RefusalConfig:
    """Options of ``refusal_study`` (refusal rate and likelihood signal, with jailbreak templates)."""

    templates: tuple[str | None, ...] = (None, "refusal_suppression")  # None: the plain request; names of JAILBREAK_TEMPLATES
    max_new_tokens: int = 32  # length of the greedy answers read by the refusal rule
    system_prompt: str | None = "default"  # the chat's system turn ("default": the evaluation's, BiPO's)
    n_boot: int = 1000  # bootstrap resamples of every interval
    seed: int = 0  # bootstrap seed (and the stock refusal drawn per request)
    batch_size: int = 8
    utility_max_tokens: int = 128  # tokens per neutral passage for the utility cost

    def __post_init__(self) -> None:
        _tuple(self, "templates")
        _check(len(self.templates) > 0, "templates is empty: give None (the plain request) or template names")
        _at_least(self, 1, "max_new_tokens", "n_boot", "batch_size", "utility_max_tokens")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TruthfulnessConfig:
    """Options of ``truthfulness_study`` (a TruthfulQA vector evaluated on held-out questions)."""

    test_fraction: float = 0.5  # questions held out (split by question)
    pairs_per_question: int = 2  # (true, false) training pairs per question, from mc2_targets
    n_train: int | None = None  # the first n_train training pairs (None: all)
    n_test: int | None = None  # the first n_test held-out questions and pairs (None: all)
    multipliers: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)  # the evaluation's multipliers
    utility_max_tokens: int = 128  # tokens per neutral passage for the utility cost
    batch_size: int = 8
    n_boot: int = 1000  # bootstrap resamples of every interval
    seed: int = 0  # the question split's seed and the bootstrap's

    def __post_init__(self) -> None:
        _tuple(self, "multipliers")
        _check(0 < self.test_fraction < 1, f"test_fraction={self.test_fraction}: must be in (0, 1)")
        _check(len(self.multipliers) > 0, "multipliers is empty")
        _at_least(self, 1, "pairs_per_question", "n_train", "n_test", "utility_max_tokens", "batch_size", "n_boot")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LoRAFinetuneConfig:
    """Options of ``lora_finetunes`` (peft LoRA fine-tunes saved when their distance passes each target)."""

    kl_targets: tuple[float, ...] = (0.1, 0.5)  # mean KL(p_base || p_finetune) per token at which to save
    rank: int = 8  # LoRA rank, on every attention and MLP projection
    alpha: float | None = None  # LoRA scale (None: 2 * rank)
    lr: float = 1e-3  # AdamW on the adapters
    batch_size: int = 4  # chats per step
    max_steps: int = 400
    check_every: int = 10  # steps between distance checks
    max_tokens: int = 128  # tokens per chat and per neutral passage
    kl_texts: int = 16  # neutral passages of the distance
    seed: int = 0  # LoRA initialisation and batch order

    def __post_init__(self) -> None:
        _tuple(self, "kl_targets")
        _check(len(self.kl_targets) > 0, f"kl_targets={list(self.kl_targets)}: give positive numbers")
        _positive(self.kl_targets, "kl_targets")
        _at_least(self, 1, "rank", "batch_size", "max_steps", "check_every", "max_tokens", "kl_texts")
        _check(self.lr > 0, f"lr={self.lr}: must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LoRATransferConfig:
    """Options of ``lora_transfer`` (vectors carried to LoRA fine-tunes of the model, and back)."""

    kl_targets: tuple[float, ...] = (0.1, 0.5)  # distances of the fine-tunes (LoRAFinetuneConfig)
    bipo_config: BiPOConfig | None = None  # BiPO on each fine-tune (None: BiPOConfig()); CAA at its layer and hook
    max_steps: int = 400  # fine-tuning steps at most
    rank: int = 8  # LoRA rank
    lr: float = 1e-3  # fine-tuning learning rate
    multipliers: tuple[float, ...] = (-1.0, 1.0)  # multipliers of the retained effect
    utility_max_tokens: int = 128  # tokens per neutral passage (distance) and per chat (fine-tuning)
    batch_size: int = 8  # evaluation batch size
    n_boot: int = 1000  # bootstrap resamples of the retained share's interval
    seed: int = 0  # fine-tuning and bootstrap seed

    def __post_init__(self) -> None:
        _tuple(self, "kl_targets", "multipliers")
        if self.bipo_config is None:
            object.__setattr__(self, "bipo_config", BiPOConfig())
        _check(len(self.multipliers) > 0, "multipliers is empty")
        self.finetune_config()  # validates the fine-tuning options

    def finetune_config(self) -> LoRAFinetuneConfig:
        """The fine-tunes' options (the rest of ``LoRAFinetuneConfig`` at its defaults)."""
        return LoRAFinetuneConfig(kl_targets=self.kl_targets, rank=self.rank, lr=self.lr, max_steps=self.max_steps,
                                  max_tokens=self.utility_max_tokens, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ExecutionConfig:
    """How ``reproduce`` makes its BiPO vectors: in this process, or as cells (``workbench.studies.cells``)."""

    executor: Literal["inline", "debug", "local", "slurm"] = "inline"  # "inline": this process
    seeds: tuple[int, ...] | None = None  # BiPO seeds made as cells (None: the study's seed only)
    cells_model: tuple[str | None, str, str] = (None, "cpu", "fp32")  # (name or directory, device, dtype) per job
    slurm: SlurmOptions | None = None  # Slurm options (None: SlurmOptions())

    def __post_init__(self) -> None:
        _check(self.executor in EXECUTORS, f"executor={self.executor!r}: use one of {', '.join(EXECUTORS)}")
        if self.seeds is not None:
            object.__setattr__(self, "seeds", tuple(self.seeds) or None)
        _tuple(self, "cells_model")
        _check(len(self.cells_model) == 3, f"cells_model={self.cells_model!r}: give (name, device, dtype)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- the whole study
@dataclass(frozen=True)
class StudyConfig:
    """What the study runs (defaults: the full study; ``quick()``: a smoke test), grouped by stage."""

    # the main vectors (stage "vectors"): BiPO and CAA of each behavior at one layer
    behaviors: tuple[str, ...] | None = None  # None: every embedded behavior (workbench.data.behaviors.list_behaviors)
    layer: int = 14  # layer of the main BiPO and CAA vectors
    hook: str = "resid_post"  # hook point in that block
    n_train: int | None = None  # training pairs per behavior (None: the whole train split)
    n_test: int | None = None  # held-out pairs per behavior (None: the whole test split)
    epochs: int = 5  # BiPO epochs
    batch_size: int = 4  # BiPO pairs per step
    lr: float | None = None  # BiPO learning rate (None: BiPOConfig's default)
    warmup_steps: int | None = None  # BiPO warm-up steps (None: BiPOConfig's default)
    # evaluation (stage "eval")
    multipliers: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)  # evaluation curve
    # layer sweep (stage "sweep")
    sweep_layers: str = "all"  # CAA sweep layers ("all" or a spec like "0-29:2")
    bipo_sweep_layers: str | None = "9,14,19"  # BiPO sweep layers (None: no BiPO sweep)
    sweep_multipliers: tuple[float, ...] = (-1.0, 1.0)  # also the transfer stage's
    # utility cost (eval, refusal, truthfulness; the matched-cost search takes at least one passage)
    utility_texts: int | None = None  # neutral passages for perplexity (None: all; 0: no utility)
    # logit lens (stage "logit_lens")
    lens_k: int = 10  # top tokens per direction
    # composition (stage "composition")
    composition: tuple[str, ...] = ("power-seeking", "wealth-seeking")  # behaviors steered together
    composition_multiplier: float = 1.0
    # transfer (stage "transfer")
    transfer_offsets: tuple[int, ...] = (-6, -4, -2, 0, 2, 4, 6)
    finetune_steps: int = 20  # steps of the fine-tuned copy for model transfer (0: skip)
    # shared by every stage
    n_boot: int = 1000  # bootstrap resamples of every interval
    eval_batch_size: int = 8
    seed: int = 0
    precision: str = "fp32"  # BiPO training and evaluation precision of the blocks after the vector
    ab: bool = False  # also the A/B metric (the held-out pairs as A/B questions), as the demo does
    utility_max_tokens: int = 128  # tokens per neutral passage for perplexity, agreement and KL
    # matched cost (stage "compare", compare_<behavior>.json): BiPO, RePS, CAA and PCA at the main layer
    compare_methods: tuple[str, ...] = ("bipo", "reps", "caa", "pca")
    budgets: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5)  # KL budgets
    compare_texts: int = 16  # neutral passages of the cost search (each probe is a forward pass on them)
    compare_max_tokens: int = 64  # tokens per passage in the cost search
    reps_epochs: int = 2  # RePS scores each batch twice (+v, -v): 2 epochs = 80 % of BiPO's 5 epochs' passes
    # refusal (stage "refusal", refusal.json, when "refusal" is among the behaviors): held-out requests
    refusal_templates: tuple[str, ...] = ("none", "refusal_suppression", "persona")
    refusal_max_new_tokens: int = 32
    # LoRA transfer (stage "lora_transfer", transfer_lora.json): peft fine-tunes at these KL distances
    lora_kl_targets: tuple[float, ...] = (0.1, 0.5)  # (): no LoRA transfer (it needs a Llama-style model)
    lora_max_steps: int = 400
    lora_rank: int = 8
    lora_lr: float = 1e-3
    # truthfulness (stage "truthfulness", truthfulness.json): TruthfulQA's mc_task.json, a path given by the user
    truthfulqa: str | None = None  # None: the stage is skipped
    truthfulqa_test_fraction: float = 0.5  # questions held out (split by question)
    truthfulqa_pairs_per_question: int = 2  # (true, false) pairs per training question, from mc2_targets
    truthfulqa_n_train: int | None = 200  # training pairs (None: all)
    truthfulqa_n_test: int | None = 60  # held-out questions (None: all; MC1/MC2 at every multiplier is the cost)

    def __post_init__(self) -> None:
        _check(self.behaviors is None or len(self.behaviors) > 0, "behaviors is empty (None: every embedded one)")
        _at_least(self, 0, "layer", "finetune_steps", "utility_texts")
        _at_least(self, 1, "n_train", "n_test", "epochs", "batch_size", "lens_k", "n_boot", "eval_batch_size",
                  "utility_max_tokens", "compare_texts", "compare_max_tokens", "reps_epochs", "refusal_max_new_tokens",
                  "lora_max_steps", "lora_rank", "truthfulqa_pairs_per_question", "truthfulqa_n_train",
                  "truthfulqa_n_test")
        for name in ("multipliers", "sweep_multipliers"):
            _check(len(getattr(self, name)) > 0, f"{name} is empty")
        _positive(self.budgets, "budgets")
        _positive(self.lora_kl_targets, "lora_kl_targets")
        _check(0 < self.truthfulqa_test_fraction < 1,
               f"truthfulqa_test_fraction={self.truthfulqa_test_fraction}: must be in (0, 1)")

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

    # ----------------------------------------------------------------------- one config per stage
    def bipo_config(self, layer: int | None = None) -> BiPOConfig:
        """BiPO at ``layer`` (default: the main layer) with the study's training settings."""
        kw: dict[str, Any] = {"layer": self.layer if layer is None else layer, "hook": self.hook,
                              "epochs": self.epochs, "batch_size": self.batch_size, "seed": self.seed,
                              "precision": self.precision}
        if self.lr is not None:
            kw["lr"] = self.lr
        if self.warmup_steps is not None:
            kw["warmup_steps"] = self.warmup_steps
        return BiPOConfig(**kw)

    def reps_config(self, layer: int | None = None) -> RePSConfig:
        """RePS at the same layer with BiPO's optimiser settings and ``reps_epochs`` epochs."""
        kw = {k: v for k, v in self.bipo_config(layer).to_dict().items() if k in RePSConfig.__dataclass_fields__}
        return RePSConfig(**{**kw, "epochs": self.reps_epochs})

    def refusal_config(self) -> RefusalConfig:
        """The refusal stage: ``refusal_templates`` (``"none"``: the plain request) and the shared settings."""
        return RefusalConfig(templates=tuple(None if t == "none" else t for t in self.refusal_templates),
                             max_new_tokens=self.refusal_max_new_tokens, n_boot=self.n_boot, seed=self.seed,
                             batch_size=self.eval_batch_size, utility_max_tokens=self.utility_max_tokens)

    def truthfulness_config(self) -> TruthfulnessConfig:
        """The truthfulness stage: the ``truthfulqa_*`` fields (``n_test`` caps the held-out questions too)."""
        return TruthfulnessConfig(test_fraction=self.truthfulqa_test_fraction,
                                  pairs_per_question=self.truthfulqa_pairs_per_question,
                                  n_train=self.truthfulqa_n_train,
                                  n_test=self.truthfulqa_n_test if self.n_test is None else self.n_test,
                                  multipliers=self.multipliers, utility_max_tokens=self.utility_max_tokens,
                                  batch_size=self.eval_batch_size, n_boot=self.n_boot, seed=self.seed)

    def lora_config(self) -> LoRATransferConfig:
        """The LoRA transfer stage: the ``lora_*`` fields, BiPO's settings for the fine-tunes' own vectors."""
        return LoRATransferConfig(kl_targets=self.lora_kl_targets, bipo_config=self.bipo_config(),
                                  max_steps=self.lora_max_steps, rank=self.lora_rank, lr=self.lora_lr,
                                  utility_max_tokens=self.utility_max_tokens, batch_size=self.eval_batch_size,
                                  n_boot=self.n_boot, seed=self.seed)


__all__ = ["ExecutionConfig", "LoRAFinetuneConfig", "LoRATransferConfig", "RefusalConfig", "StudyConfig",
           "TruthfulnessConfig"]
