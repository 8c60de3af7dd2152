"""The ``workbench train`` run: train a BiPO or RePS vector, or extract a CAA, ActAdd or PCA vector, and save it.

BiPO (Cao et al. 2024, arXiv 2406.00045) and RePS (Wu et al. 2025, arXiv 2505.20809) are trained by
``workbench.train``'s preference trainer; CAA (Rimsky et al. 2023, arXiv 2312.06681), ActAdd (Turner et
al. 2023, arXiv 2308.10248) and PCA are extracted by ``workbench.train.baselines``. Options are checked,
and the pairs read, before the model loads; answers too long for ``max_length`` are refused by the
engine's own token rule (``workbench.engine.scoring.tokenize_items``) before training starts.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.core.backend import Model
from workbench.core.artifacts import artifact_lock
from workbench.core.prompts import prompt_format, prompts_and_answers
from workbench.core.vector import SteeringVector
from workbench.engine.items import AnswerTooLongError, tokenize_items
from workbench.studies.runs import (DataOptions, Log, ModelOptions, RunError, check_at_least_one, check_data, check_out,
                                    chosen_system_prompt, silent)
from workbench.train import BiPOConfig, RePSConfig, TrainConfig, baselines, relayout_plan, train_bipo, train_reps

TRAINED = {"bipo": "BiPO", "reps": "RePS"}  # methods trained by the preference trainer (the others are extracted)
LONG_ANSWER_CHARS = 2048  # CAA/PCA warn beyond this: every answer token is a forward position


@dataclass(kw_only=True)
class TrainRun(ModelOptions, DataOptions):
    """Options of ``workbench train`` (``TrainConfig`` fields left None take BiPOConfig's/RePSConfig's defaults)."""

    out: str  # output vector directory
    method: str = "bipo"  # bipo, reps, caa, actadd or pca
    split: str = "train"  # the behavior's split
    limit: int | None = None  # use the first N pairs
    layer: int | None = None  # block index (None: BiPOConfig's)
    hook: str | None = None  # resid_post (None; resid_pre for actadd), resid_pre, resid_mid, attn_out, mlp_out
    epochs: int | None = None
    lr: float | None = None
    beta: float | None = None  # BiPO only
    batch_size: int | None = None  # trainer pairs per step; caa/pca pairs per pass
    warmup_steps: int | None = None
    direction: str | None = None  # BiPO only: one direction per batch or per pair
    precision: str | None = None  # dtype of the blocks after the hook
    relayout: bool | None = None  # CPU copy of the blocks after the hook laid out for the matmuls (None: auto)
    seed: int | None = None
    max_length: int | None = None  # tokens of prompt + answer
    checkpoint_dir: str | None = None  # checkpoint after every epoch here
    resume: bool = False  # continue from checkpoint_dir
    position: str = "answer_mean"  # caa/pca position rule
    positive: str | None = None  # actadd: the positive prompt
    negative: str | None = None  # actadd: the negative prompt
    system_prompt: str | None = None  # None: BiPO's
    no_system_prompt: bool = False

    def check(self) -> tuple[str, str | None]:
        """Everything that can be refused without data or a model, in the command's order; returns the paths
        to write, ``--out`` and ``--checkpoint-dir`` (``check_out``: a symbolic link followed)."""
        check_at_least_one(self, "limit", "epochs", "batch_size")
        self.check_model()
        chosen_system_prompt(self.system_prompt, self.no_system_prompt)
        if self.method == "actadd":
            if self.positive is None or self.negative is None:
                raise RunError("--method actadd needs --positive TEXT and --negative TEXT")
        elif self.data is None and self.behavior is None:
            raise RunError(f"--method {self.method} needs preference pairs: give --data PATH or --behavior NAME")
        if self.resume and self.checkpoint_dir is None:
            raise RunError("--resume needs --checkpoint-dir")
        if self.method != "actadd":
            self.check_source()
        out = check_out("--out", self.out, kind="dir")
        checkpoint_dir = check_out("--checkpoint-dir", self.checkpoint_dir, kind="dir")
        ck = None if checkpoint_dir is None else Path(checkpoint_dir)
        if ck is not None and not self.resume and ck.is_dir() and any(ck.iterdir()):
            raise RunError(f"--checkpoint-dir {self.checkpoint_dir}: not empty; pass --resume to continue from it "
                           "or choose another directory")
        if self.layer is not None and self.layer < 0:
            raise RunError(f"--layer {self.layer}: must be >= 0")
        if self.max_length is not None and self.max_length < 1:
            raise RunError(f"--max-length {self.max_length}: must be >= 1")
        if self.method == "reps" and (self.beta is not None or self.direction is not None):
            raise RunError("--beta and --direction apply to --method bipo only")
        check_data(self.data)
        return out, checkpoint_dir

    def trainer_config(self, layer: int, hook: str, system_prompt: str | None) -> TrainConfig:
        """The BiPOConfig or RePSConfig of the options given; an out-of-range field names its flag."""
        given = {"layer": layer, "hook": hook, "epochs": self.epochs, "lr": self.lr, "beta": self.beta,
                 "batch_size": self.batch_size, "warmup_steps": self.warmup_steps, "direction": self.direction,
                 "precision": self.precision, "relayout": self.relayout, "seed": self.seed, "max_length": self.max_length,
                 "system_prompt": system_prompt}
        try:
            return (BiPOConfig if self.method == "bipo" else RePSConfig)(
                **{k: v for k, v in given.items() if v is not None or k == "system_prompt"})
        except ValueError as exc:  # "BiPOConfig.lr=-1 is out of range" -> also name the flag
            field = re.match(r"\w+Config\.(\w+)=", str(exc))
            raise RunError(f"{exc}" + (f" (--{field.group(1).replace('_', '-')})" if field else "")) from None


def _where(pair: Any, index: int, source: str) -> str:
    """Where a pair comes from: its ``path:line`` (or ``behavior:index``), else ``pair N of SOURCE``."""
    return pair.source or f"pair {index + 1} of {source}"


def warn_long_answers(pairs: Sequence[Any], source: str, log: Log) -> None:
    """One warning line when CAA/PCA will run over very long answers (every answer token is a forward position)."""
    long = [(i, p) for i, p in enumerate(pairs) if max(len(p.matching), len(p.not_matching)) > LONG_ANSWER_CHARS]
    if long:
        i, p = long[0]
        log(f"warning: {len(long)} pair(s) have an answer over {LONG_ANSWER_CHARS} characters "
            f"(first: {_where(p, i, source)}, {max(len(p.matching), len(p.not_matching))} characters); "
            "this will be slow")


def check_answer_lengths(model: Model, pairs: Sequence[Any], max_length: int, system_prompt: str | None,
                         source: str) -> None:
    """Refuse, naming the file and line, an answer that does not fit in ``max_length`` tokens with its prompt.

    The trainer cuts prompts from the left but never an answer: this tokenizes the pairs as the trainer
    does (``tokenize_items`` over ``prompts_and_answers``, answers closed by the end-of-turn string) and
    turns the engine's error on the first answer too long (``AnswerTooLongError``) into one naming the
    pair and the flag.
    """
    try:
        tokenize_items(model, *prompts_and_answers(model, pairs, system_prompt), max_length)
    except AnswerTooLongError as exc:
        i, which = divmod(exc.index, 2)  # two answers per pair
        raise RunError(f"{_where(pairs[i], i, source)}: the {('matching', 'not_matching')[which]} answer has "
                       f"{exc.n_tokens} tokens, too many for --max-length {exc.max_length} (answers are never cut); "
                       "raise --max-length") from None


def train_run(config: TrainRun, log: Log = silent) -> tuple[SteeringVector, dict[str, Any] | None]:
    """Make the vector ``config`` asks for and save it to ``config.out`` (with ``history.json`` when trained).

    Returns:
        The saved vector and the training history (None for an extracted vector).
    """
    out, checkpoint_dir = config.check()
    with artifact_lock(out, wait=0):  # one writer per --out: a second run into it fails now, naming this process
        return _train_run(config, out, checkpoint_dir, log)


def _train_run(config: TrainRun, out: Path, checkpoint_dir: Path | None,
               log: Log) -> tuple[SteeringVector, dict[str, Any] | None]:
    system_prompt = chosen_system_prompt(config.system_prompt, config.no_system_prompt)
    layer = BiPOConfig().layer if config.layer is None else config.layer
    hook = config.hook or ("resid_pre" if config.method == "actadd" else "resid_post")
    config.check_layer_hook(layer, hook)
    trainer = config.trainer_config(layer, hook, system_prompt) if config.method in TRAINED else None
    pairs, data_info, source = None, {}, config.data or config.behavior
    if config.method != "actadd":
        pairs, data_info = config.pairs("train")
        pairs = pairs[: config.limit]
        if not pairs:
            raise RunError(f"{source}: no preference pairs")
        if config.method in ("caa", "pca"):
            warn_long_answers(pairs, source, log)

    model = config.load_model()
    if not 0 <= layer < model.cfg.n_layers:
        raise RunError(f"--layer {layer}: model {model.cfg.model_name} has layers 0..{model.cfg.n_layers - 1}")
    if trainer is not None and trainer.max_length is not None:
        check_answer_lengths(model, pairs, trainer.max_length, trainer.system_prompt, source)
    t0 = time.perf_counter()
    history = None
    if trainer is not None:
        dtype = str(model.cfg.dtype).removeprefix("torch.")
        after = "bf16" if trainer.precision == "bf16" else dtype  # the blocks after the hook
        log(f"train: {TRAINED[config.method]} on {len(pairs)} pairs at {trainer.hook_name}, {trainer.epochs} "
            f"epochs, lr {trainer.lr:g}, model {dtype}, blocks after the hook {after}")
        log(f"train: {relayout_plan(model, trainer)['message']}")
        train = train_bipo if config.method == "bipo" else train_reps
        result = train(model, pairs, trainer, checkpoint_dir=checkpoint_dir, resume=config.resume)
        vector, history = result.vector, result.to_dict()
    elif config.method == "actadd":
        bound = {"max_length": config.max_length} if config.max_length is not None else {}
        vector = baselines.actadd(model, config.positive, config.negative, layer, hook=hook, **bound)
    else:
        kwargs = {"batch_size": config.batch_size} if config.batch_size else {}
        if config.max_length is not None:  # otherwise the engine's default bound (engine.items.DEFAULT_MAX_LENGTH)
            kwargs["max_length"] = config.max_length
        vector = getattr(baselines, config.method)(model, pairs, layer, hook=hook, position=config.position,
                                                   system_prompt=system_prompt, **kwargs)
    # the chat layout of the pairs (ActAdd's two prompts are raw text); vector.json's free metadata holds it
    formats = {} if config.method == "actadd" else {"prompt_format": prompt_format(model, system_prompt)}
    vector = dataclasses.replace(vector, metadata={**vector.metadata, "data": data_info,
                                                   "seconds": time.perf_counter() - t0, **formats})
    vector.save(out, extra={"history.json": history} if history is not None else None)  # one commit, with its history
    summary = f"; final loss {history['epochs'][-1]['loss']:.4f}" if history and history["epochs"] else ""
    log(f"wrote {config.out}: {vector.describe()}{summary}")
    return vector, history


__all__ = ["LONG_ANSWER_CHARS", "TRAINED", "TrainRun", "check_answer_lengths", "train_run", "warn_long_answers"]
