"""The runs behind the ``workbench`` commands: one config and one function per command.

The study they serve follows BiPO (Cao et al. 2024, arXiv 2406.00045): train or extract steering vectors,
evaluate them over multipliers, compare them, sweep layers. Each command of ``workbench.cli`` parses its
flags into a run config and calls one run function (``workbench.studies.run_train``, ``run_evaluate``,
``run_studies``, ``run_files``); this module holds what the runs share: the model and data options, the
checks of paths and options, and the loading of vectors, pairs, neutral text and the model.

A run config mirrors its command's flags field for field (``test_fraction`` is ``--test-fraction``), so a
user error is a ``RunError`` worded with the flags, which the command line prints as it is. Every check
that can fail without a model runs before the model loads. Status lines go to the ``log`` callable a run
is given (the command line prints them on stderr; a line starting with ``"warning: "`` is a warning).
Every result a run writes goes through ``write_result``, which records the model and the prompt format
(``workbench.core.prompts.prompt_format``: chat template or plain prompt, end of turn, BOS) beside it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.core import loading  # the module, not its function: load_model is looked up at each call
from workbench.core.backend import Model
from workbench.core.devices import ModelLoadError, resolve_device
from workbench.core.embedded import EMBEDDED_MODEL_NAME, EMBEDDED_N_LAYERS
from workbench.core.io import atomic_write_json
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT, prompt_format
from workbench.core.results import Result
from workbench.core.vector import SteeringVector, full_hook_name
from workbench.data.behaviors import load_behavior, load_neutral_text
from workbench.data.formats import load_pairs
from workbench.data.pairs import DataFormatError, PreferencePair, train_test_split
from workbench.evaluate.statistics import check_multipliers

#: where a run's status lines go (``print`` to stderr in the command line)
Log = Callable[[str], None]


class RunError(ValueError):
    """A user error in a run's options, worded with the command's flags: printed as it is, exit code 2."""


def silent(line: str) -> None:
    """The default ``log``: drop status lines."""


@dataclass(kw_only=True)
class ModelOptions:
    """The model a run loads (``--model``, ``--device``, ``--dtype``, ``--n-devices``)."""

    model: str | None = None  # TransformerLens name or local Hugging Face directory (None: the embedded model)
    device: str = "cpu"  # cpu, cuda, cuda:N, mps or auto
    dtype: str = "fp32"  # fp32, bf16 or fp16: the whole model's weights
    n_devices: int = 1  # split the blocks over this many CUDA devices

    def check_model(self) -> str:
        """Refuse ``--device`` and ``--n-devices`` before any work (no model is loaded); returns the device."""
        try:
            device = resolve_device(self.device)
        except ModelLoadError as exc:
            raise RunError(f"--device: {exc}") from None
        if isinstance(self.n_devices, bool) or not isinstance(self.n_devices, int) or self.n_devices < 1:
            raise RunError(f"--n-devices {self.n_devices}: must be a whole number >= 1")
        if self.n_devices > 1:
            if not device.startswith("cuda"):
                raise RunError(f"--n-devices {self.n_devices}: splitting the blocks needs --device cuda, "
                               f"got {self.device}")
            import torch  # the CUDA devices this machine has

            if self.n_devices > torch.cuda.device_count():
                raise RunError(f"--n-devices {self.n_devices}: this machine has {torch.cuda.device_count()} "
                               "CUDA device(s)")
        return device

    def load_model(self) -> Model:
        """The model these options ask for; a bad device, dtype or name is a ``RunError``."""
        device = self.check_model()
        try:
            return loading.load_model(self.model, device=device, dtype=self.dtype, n_devices=self.n_devices)
        except ModelLoadError as exc:
            raise RunError(f"--model/--device: {exc}") from None

    def check_layer_hook(self, layer: int, hook: str) -> None:
        """Refuse ``hook`` and (for the embedded model, whose size is known) ``layer`` before a model loads."""
        try:
            full_hook_name(layer, hook)
        except ValueError as exc:
            raise RunError(f"--hook {hook}: {exc}") from None
        if self.model in (None, EMBEDDED_MODEL_NAME) and not 0 <= layer < EMBEDDED_N_LAYERS:
            raise RunError(f"--layer {layer}: model {EMBEDDED_MODEL_NAME} has layers 0..{EMBEDDED_N_LAYERS - 1}")


@dataclass(kw_only=True)
class DataOptions:
    """The preference pairs a run reads (``--data``/``--behavior`` and their options)."""

    data: str | None = None  # preference-pair file
    behavior: str | None = None  # embedded behavior instead of data
    split: str = "test"  # the behavior's split: train, test or all
    format: str = "auto"  # format of data (workbench.data.formats.PAIR_FORMATS) or auto
    allow_empty_question: bool = False  # keep data rows whose question is empty
    test_fraction: float | None = None  # split data deterministically and use one part
    split_seed: int = 0  # seed of that split
    pairs_per_question: int | None = None  # TruthfulQA formats: at most this many pairs per question

    def loader_options(self) -> dict[str, Any]:
        """Options of ``load_pairs`` (``allow_empty_question``, ``per_question``)."""
        kw: dict[str, Any] = {"allow_empty_question": True} if self.allow_empty_question else {}
        if self.pairs_per_question is not None:
            if not str(self.format).startswith("truthfulqa"):
                raise RunError("--pairs-per-question needs --format truthfulqa-mc1 or truthfulqa-mc2, "
                               f"not {self.format}")
            if self.pairs_per_question < 1:
                raise RunError(f"--pairs-per-question must be >= 1, got {self.pairs_per_question}")
            kw = {"per_question": self.pairs_per_question}
        return kw

    def check_test_fraction(self) -> None:
        if self.test_fraction is not None and not 0 < self.test_fraction < 1:
            raise RunError(f"--test-fraction {self.test_fraction}: must be between 0 and 1")

    def check_source(self, embedded: str | None = None) -> None:
        """Refuse, before any work, options that the pairs' source would ignore: ``--test-fraction`` and
        ``--pairs-per-question`` with an embedded set instead of ``--data`` (``--behavior``, or ``embedded``
        where the run reads one without data): its train/test split is fixed."""
        source = f"--behavior {self.behavior}" if self.behavior is not None else embedded
        if self.data is None and source is not None:
            for flag, value in (("--test-fraction", self.test_fraction),
                                ("--pairs-per-question", self.pairs_per_question)):
                if value is not None:
                    raise RunError(f"{flag} applies to --data only; the train/test split of {source} is fixed"
                                   + (" (choose a part with --split)" if self.behavior is not None else ""))
        self.check_test_fraction()

    def data_part(self, part: str) -> tuple[list[PreferencePair], dict[str, Any]]:
        """Pairs of ``data`` (its ``part``, "train" or "test", of a ``test_fraction`` split) and their description."""
        pairs = load_pairs(self.data, self.format, **self.loader_options())
        info: dict[str, Any] = {"path": str(self.data), "format": self.format}
        if self.test_fraction is not None:
            self.check_test_fraction()
            train, test = train_test_split(pairs, self.test_fraction, self.split_seed)
            pairs = train if part == "train" else test
            info |= {"test_fraction": self.test_fraction, "split_seed": self.split_seed, "part": part}
        return pairs, info

    def pairs(self, part: str) -> tuple[list[PreferencePair], dict[str, Any]]:
        """The behavior's ``split`` or the ``part`` of ``data``, and their description."""
        if self.behavior is not None:
            return load_behavior(self.behavior, self.split), {"behavior": self.behavior, "split": self.split}
        return self.data_part(part)


def check_out(flag: str, path: str | Path | None, *, kind: str) -> str | None:
    """Refuse an output path before any work starts: ``kind`` is "file" or "dir" (what will be written there).

    Returns the path to write: ``path`` itself, or, when ``path`` is a symbolic link to an existing file or
    directory, the link's target (followed, so that the writer replaces what it points to, not the link).
    A dangling link is refused: whether to create its target or replace the link cannot be guessed.
    """
    if path is None:
        return None
    p = Path(path)
    if p.is_symlink():
        target = os.readlink(p)
        if not p.exists():
            raise RunError(f"{flag} {path}: is a symbolic link to {target}, which does not exist; remove the link "
                           "or give another path")
        resolved = p.resolve()
        check_out(flag, resolved, kind=kind)
        return str(resolved)
    if kind == "file" and p.is_dir():
        raise RunError(f"{flag} {path}: is a directory; give a file path")
    if kind == "dir" and p.exists() and not p.is_dir():
        raise RunError(f"{flag} {path}: is a file; give a directory path")
    parent = p if p.is_dir() else p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise RunError(f"{flag} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunError(f"{flag} {path}: {parent} is not writable")
    return str(path)


def check_data(path: str | Path | None) -> None:
    """Refuse a ``--data`` path that is missing or not a regular file before any work starts."""
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise RunError(f"--data {path}: no such file")
    if p.is_dir():
        raise RunError(f"--data {path}: is a directory; give a data file")


def check_at_least_one(config: object, *names: str) -> None:
    """Refuse a count option (``limit``, ``epochs`` ...) below 1; None means "not given"."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise RunError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def check_run_multipliers(values: Sequence[float], flag: str = "--multipliers") -> list[float]:
    """``values`` as ``evaluate.statistics.check_multipliers`` takes them (numbers, finite, each given once),
    checked before any work; an error names ``flag``."""
    try:
        return check_multipliers(list(values), what=flag)
    except ValueError as exc:
        raise RunError(str(exc)) from None  # "--multipliers[0] = 1 and --multipliers[1] = 1 are the same ..."


def chosen_system_prompt(system_prompt: str | None, no_system_prompt: bool) -> str | None:
    """The system prompt of ``--system-prompt``/``--no-system-prompt`` (default: BiPO's)."""
    if no_system_prompt and system_prompt is not None:
        raise RunError("--system-prompt and --no-system-prompt exclude each other")
    return None if no_system_prompt else (system_prompt or DEFAULT_SYSTEM_PROMPT)


def with_run_info(result: Mapping[str, Any], model: Model,
                  system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> dict[str, Any]:
    """A copy of ``result`` with the run's ``prompt_format`` (and ``model``, its name, when absent).

    ``system_prompt`` is the one the run's prompts were made with (BiPO's unless the command has
    ``--system-prompt``/``--no-system-prompt``). A ``Result`` stays one (the keys go after ``schema_version``).
    """
    info: dict[str, Any] = {} if "model" in result else {"model": str(model.cfg.model_name)}
    info["prompt_format"] = prompt_format(model, system_prompt)
    if isinstance(result, Result):
        return result.with_info(**info)
    return {**result, **info}


def write_result(result: Mapping[str, Any], path: str | Path, model: Model,
                 system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> dict[str, Any]:
    """Write ``with_run_info(result, model, system_prompt)`` to ``path`` as JSON, atomically; returns it."""
    result = with_run_info(result, model, system_prompt)
    atomic_write_json(dict(result), path)
    return result


def vector_labels(vectors: Sequence[tuple[SteeringVector, str | Path]]) -> list[str]:
    """A label per (vector, path): its method, or ``method:dirname`` when several share a method."""
    methods = Counter(v.method for v, _ in vectors)
    labels = [v.method if methods[v.method] == 1 else f"{v.method}:{Path(p).resolve().name}" for v, p in vectors]
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab}#{seen[lab]}")
    return out


def load_vectors(paths: Sequence[str | Path]) -> tuple[dict[str, SteeringVector], dict[str, str]]:
    """The vector directories ``paths`` by label (``vector_labels``), and each label's directory."""
    loaded = [(SteeringVector.load(path), path) for path in paths]
    labels = vector_labels(loaded)
    return dict(zip(labels, (v for v, _ in loaded))), {lab: str(p) for lab, (_, p) in zip(labels, loaded)}


def neutral_texts(path: str | Path | None, limit: int | None) -> list[str]:
    """The ``--neutral`` file's passages (one per line, ``load_neutral_text``), or the embedded neutral
    text; the first ``limit``."""
    if path is not None and not Path(path).is_file():
        raise RunError(f"--neutral {path}: no such file")
    try:
        return load_neutral_text(path)[:limit]
    except DataFormatError as exc:
        raise RunError(f"--neutral {exc}") from None


__all__ = ["DataOptions", "Log", "ModelOptions", "RunError", "check_at_least_one", "check_data", "check_out",
           "check_run_multipliers", "chosen_system_prompt", "load_vectors", "neutral_texts", "silent", "vector_labels",
           "with_run_info", "write_result"]
