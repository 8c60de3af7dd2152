"""The ``workbench`` command: train, eval, sweep, figures, convert, demo, info.

Each subcommand has an ``_add_<name>(subparsers)`` that declares its arguments and a
``_run_<name>(args) -> int`` that runs it; heavy imports happen inside the run functions so that
``workbench --help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any
from collections.abc import Sequence



class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def _check_out(flag: str, path, *, kind: str) -> None:
    """Refuse an output path before any work starts: ``kind`` is "file" or "dir" (what will be written there)."""
    import os
    from pathlib import Path

    if path is None:
        return
    p = Path(path)
    if kind == "file" and p.is_dir():
        raise CLIError(f"{flag} {path}: is a directory; give a file path")
    if kind == "dir" and p.exists() and not p.is_dir():
        raise CLIError(f"{flag} {path}: is a file; give a directory path")
    parent = p if p.is_dir() else p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CLIError(f"{flag} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {path}: {parent} is not writable")


def _check_data(path) -> None:
    """Refuse a --data path that is missing or not a regular file before any work starts."""
    from pathlib import Path

    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise CLIError(f"--data {path}: no such file")
    if p.is_dir():
        raise CLIError(f"--data {path}: is a directory; give a data file")


def _check_layer_hook(args: argparse.Namespace, layer: int, hook: str) -> None:
    """Refuse ``--hook`` and (for the embedded model, whose size is known) ``--layer`` before a model loads."""
    from workbench.core.loading import EMBEDDED_MODEL_NAME, EMBEDDED_N_LAYERS
    from workbench.core.vector import full_hook_name

    try:
        full_hook_name(layer, hook)
    except ValueError as exc:
        raise CLIError(f"--hook {hook}: {exc}") from None
    if args.model in (None, EMBEDDED_MODEL_NAME) and not 0 <= layer < EMBEDDED_N_LAYERS:
        raise CLIError(f"--layer {layer}: model {EMBEDDED_MODEL_NAME} has layers 0..{EMBEDDED_N_LAYERS - 1}")


#: library argument -> the flag that sets it: library errors name the argument (``layers=``), the CLI the flag
ARGUMENT_FLAGS = {"layers": "--layers", "multipliers": "--multipliers", "key": "--key", "layer": "--layer",
                  "pairs": "--data / --behavior", "ab_pairs": "--ab-from-text", "truthfulqa": "--truthfulqa",
                  "refusal_prompts": "--refusal-csv", "allow_empty_question": "--allow-empty-question",
                  "results_dir": "--results", "max_length": "--max-length", "budgets": "--budgets", "cost": "--cost"}
_ARGUMENT = re.compile(r"(?<![\w.])(" + "|".join(ARGUMENT_FLAGS) + r")=(True\b|\.\.\.|[^\s,;:)]*)")


def as_flags(message: str) -> str:
    """A library message with each ``argument=value`` it names written as the CLI flag (``layers='0-99'``
    -> ``--layers '0-99'``; ``allow_empty_question=True`` -> ``--allow-empty-question``)."""
    def flag(m: re.Match) -> str:
        value = m.group(2)
        return ARGUMENT_FLAGS[m.group(1)] + ("" if value in ("", "True", "...") else f" {value}")

    return _ARGUMENT.sub(flag, message)


def _describe_exception(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit code for an exception that reached main (2: user error, 1: internal)."""
    import errno

    if isinstance(exc, CLIError):
        return str(exc), 2
    if isinstance(exc, ValueError | FileNotFoundError):
        return as_flags(str(exc)), 2
    if isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else ""
        where = f"{where}: " if where else ""
        if exc.errno == errno.ENOSPC:
            return f"{where}no space left on device", 2
        if isinstance(exc, IsADirectoryError):
            return f"{where}is a directory", 2
        if isinstance(exc, NotADirectoryError):
            return f"{where}a part of the path is not a directory", 2
        if isinstance(exc, FileExistsError):
            return f"{where}already exists", 2
        if isinstance(exc, PermissionError):
            return f"{where}permission denied", 2
        return f"{where}{exc.strerror or exc}", 2  # e.g. the hub unreachable offline
    if isinstance(exc, MemoryError):
        return "out of memory", 1
    return f"internal error ({type(exc).__name__}: {exc}); rerun with -v for the traceback", 1


def _parse_multipliers(values: Sequence[str]) -> list[float]:
    out = []
    for v in values:
        try:
            out.append(float(v))
        except ValueError:
            raise CLIError(f"--multipliers: {v!r} is not a number") from None
    return out


# --------------------------------------------------------------------------- data options
def _data_kw(args: argparse.Namespace) -> dict[str, Any]:
    """Loader options of ``--data`` (``--allow-empty-question``, ``--pairs-per-question``)."""
    kw: dict[str, Any] = {"allow_empty_question": True} if getattr(args, "allow_empty_question", False) else {}
    per_question = getattr(args, "pairs_per_question", None)
    if per_question is not None:
        if not str(getattr(args, "format", "")).startswith("truthfulqa"):
            raise CLIError(f"--pairs-per-question needs --format truthfulqa-mc1 or truthfulqa-mc2, not {args.format}")
        if per_question < 1:
            raise CLIError(f"--pairs-per-question must be >= 1, got {per_question}")
        kw = {"per_question": per_question}
    return kw


def _add_holdout(p: argparse.ArgumentParser, part: str) -> None:
    p.add_argument("--test-fraction", type=float, default=None, metavar="F",
                   help=f"split --data deterministically and use its {part} part (train and eval with the same "
                        "F and --split-seed see disjoint pairs)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the --test-fraction split (default 0)")
    p.add_argument("--pairs-per-question", type=int, default=None, metavar="K",
                   help="TruthfulQA formats: at most K (true, false) pairs per question (default: all)")


def _data_part(args: argparse.Namespace, part: str) -> tuple[list, dict]:
    """Pairs of ``--data`` (its ``part`` of a ``--test-fraction`` split if given) and their description."""
    from workbench.data.formats import load_pairs
    from workbench.data.pairs import train_test_split

    pairs = load_pairs(args.data, args.format, **_data_kw(args))
    info = {"path": str(args.data), "format": args.format}
    if args.test_fraction is not None:
        if not 0 < args.test_fraction < 1:
            raise CLIError(f"--test-fraction {args.test_fraction}: must be between 0 and 1")
        train, test = train_test_split(pairs, args.test_fraction, args.split_seed)
        pairs = train if part == "train" else test
        info |= {"test_fraction": args.test_fraction, "split_seed": args.split_seed, "part": part}
    return pairs, info


# --------------------------------------------------------------------------- model options
def _add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--dtype``, ``--n-devices``: shared by every command that loads a model."""
    p.add_argument("--model", default=None, help="TransformerLens name or local Hugging Face directory (default: embedded)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto (cuda when available)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="dtype of the whole model's weights (default fp32); --precision only sets the blocks after "
                        "the vector of an fp32 model")
    p.add_argument("--n-devices", type=int, default=1, help="split the blocks over N CUDA devices (default 1)")


def _load_model(args: argparse.Namespace):
    """The model the model options of ``args`` ask for; a bad device, dtype or name is a CLIError."""
    from workbench.core.loading import ModelLoadError, load_model, resolve_device

    try:
        device = resolve_device(args.device)
        return load_model(args.model, device=device, dtype=args.dtype, n_devices=args.n_devices)
    except ModelLoadError as exc:
        raise CLIError(f"--model/--device: {exc}") from None


# --------------------------------------------------------------------------- info
def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="load a model and print its shape and hook points")
    _add_model_args(p)


def _run_info(args: argparse.Namespace) -> int:
    import time

    from workbench.core.loading import load_model
    from workbench.core.vector import valid_hook_names

    t0 = time.perf_counter()
    model = _load_model(args)
    dt = time.perf_counter() - t0
    hooks = valid_hook_names(model)
    print(f"model {model.cfg.model_name}: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
          f"vocab {model.cfg.d_vocab}; loaded in {dt:.1f} s")
    print(f"{len(hooks)} steering hook points, e.g. {hooks[0]} ... {hooks[-1]}")
    return 0


# --------------------------------------------------------------------------- train
TRAINED = {"bipo": "BiPO", "reps": "RePS"}  # methods trained by workbench.train.bipo's trainer


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train or extract a steering vector (bipo, reps, caa, actadd, pca)",
        description="Train a BiPO or RePS vector or extract a CAA, ActAdd or PCA vector and save it as a vector "
                    "directory (vector.safetensors + vector.json; BiPO and RePS also write history.json). BiPO "
                    "options left out take workbench.train.bipo.BiPOConfig's defaults (RePS: workbench.train.reps.RePSConfig's, "
                    "the same; --beta and --direction are BiPO's only).")
    p.add_argument("--method", choices=("bipo", "reps", "caa", "actadd", "pca"), default="bipo")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", default=None, help="preference-pair file (bipo, caa, pca)")
    src.add_argument("--behavior", default=None, help="embedded behavior instead of --data (see --split)")
    p.add_argument("--format", default="auto", choices=("bipo-csv", "ab-json", "ab-text", "truthfulqa-mc1",
                                                        "truthfulqa-mc2", "jsonl", "advbench", "auto"),
                   help="format of --data (advbench: refusal pairs from AdvBench's goal,target CSV)")
    p.add_argument("--split", default="train", choices=("train", "test", "all"), help="--behavior split (default train)")
    p.add_argument("--allow-empty-question", action="store_true",
                   help="keep --data rows whose question is empty (a few in BiPO's power/wealth CSVs)")
    _add_holdout(p, "train")
    p.add_argument("--limit", type=int, default=None, help="use the first N pairs")
    p.add_argument("--layer", type=int, default=None, help="block index (default: BiPOConfig's, 14)")
    p.add_argument("--hook", default=None, help="resid_post (default; resid_pre for actadd), resid_pre, resid_mid, "
                                                "attn_out or mlp_out")
    p.add_argument("--epochs", type=int, default=None, help="BiPO epochs")
    p.add_argument("--lr", type=float, default=None, help="BiPO peak learning rate")
    p.add_argument("--beta", type=float, default=None, help="BiPO beta")
    p.add_argument("--batch-size", type=int, default=None, help="BiPO pairs per step; caa/pca pairs per pass")
    p.add_argument("--warmup-steps", type=int, default=None, help="BiPO linear warm-up steps")
    p.add_argument("--direction", choices=("batch", "example"), default=None, help="BiPO: one d per batch or per pair")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="BiPO: dtype of the blocks after the hook")
    p.add_argument("--bipo-seed", "--seed", dest="seed", type=int, default=None,
                   help="BiPO seed: shuffling, directions, init (--seed is the old name)")
    p.add_argument("--max-length", type=int, default=None, metavar="N",
                   help="BiPO: tokens of prompt + answer (prompts are cut from the left; default: BiPOConfig's, 256)")
    p.add_argument("--checkpoint-dir", default=None, help="BiPO: checkpoint after every epoch here")
    p.add_argument("--resume", action="store_true", help="BiPO: continue from --checkpoint-dir")
    p.add_argument("--position", default="answer_mean", help="caa/pca position rule (answer_mean, last, ab_letter)")
    p.add_argument("--positive", default=None, help="actadd: the positive prompt")
    p.add_argument("--negative", default=None, help="actadd: the negative prompt")
    p.add_argument("--system-prompt", default=None,
                   help="system prompt (default: BiPO's 'You are a helpful, honest and concise assistant.')")
    p.add_argument("--no-system-prompt", action="store_true", help="no system turn")
    _add_model_args(p)
    p.add_argument("--out", required=True, help="output vector directory")


def _run_train(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    for name in ("limit", "epochs", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.no_system_prompt and args.system_prompt is not None:
        raise CLIError("--system-prompt and --no-system-prompt exclude each other")
    if args.method == "actadd":
        if args.positive is None or args.negative is None:
            raise CLIError("--method actadd needs --positive TEXT and --negative TEXT")
    elif args.data is None and args.behavior is None:
        raise CLIError(f"--method {args.method} needs preference pairs: give --data PATH or --behavior NAME")
    if args.resume and args.checkpoint_dir is None:
        raise CLIError("--resume needs --checkpoint-dir")
    _check_out("--out", args.out, kind="dir")
    _check_out("--checkpoint-dir", args.checkpoint_dir, kind="dir")
    if args.checkpoint_dir is not None and not args.resume and Path(args.checkpoint_dir).is_dir() \
            and any(Path(args.checkpoint_dir).iterdir()):
        raise CLIError(f"--checkpoint-dir {args.checkpoint_dir}: not empty; pass --resume to continue from it "
                       "or choose another directory")
    if args.layer is not None and args.layer < 0:
        raise CLIError(f"--layer {args.layer}: must be >= 0")
    if args.max_length is not None and args.method not in TRAINED:
        raise CLIError("--max-length applies to --method reps or bipo only")
    if args.method == "reps" and (args.beta is not None or args.direction is not None):
        raise CLIError("--beta and --direction apply to --method bipo only")
    _check_data(args.data)

    from workbench.train.bipo import BiPOConfig, train_bipo
    from workbench.train.reps import RePSConfig, train_reps
    from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT
    from workbench.data.behaviors import load_behavior
    from workbench.data.formats import load_pairs
    from workbench.core.io import atomic_write_json
    from workbench.core.loading import load_model

    system_prompt = None if args.no_system_prompt else (args.system_prompt or DEFAULT_SYSTEM_PROMPT)
    layer = BiPOConfig().layer if args.layer is None else args.layer
    hook = args.hook or ("resid_pre" if args.method == "actadd" else "resid_post")
    _check_layer_hook(args, layer, hook)
    config = None
    if args.method in TRAINED:
        given = {"layer": layer, "hook": hook, "epochs": args.epochs, "lr": args.lr, "beta": args.beta,
                 "batch_size": args.batch_size, "warmup_steps": args.warmup_steps, "direction": args.direction,
                 "precision": args.precision, "seed": args.seed, "max_length": args.max_length,
                 "system_prompt": system_prompt}
        try:
            config = (BiPOConfig if args.method == "bipo" else RePSConfig)(
                **{k: v for k, v in given.items() if v is not None or k == "system_prompt"})
        except ValueError as exc:  # "BiPOConfig.lr=-1 is out of range" -> also name the flag
            import re

            field = re.match(r"\w+Config\.(\w+)=", str(exc))
            raise CLIError(f"{exc}" + (f" (--{field.group(1).replace('_', '-')})" if field else "")) from None
    pairs, data_info = None, {}
    if args.method != "actadd":
        if args.behavior is not None:
            pairs, data_info = load_behavior(args.behavior, args.split), {"behavior": args.behavior, "split": args.split}
        else:
            pairs, data_info = _data_part(args, "train")
        pairs = pairs[: args.limit]
        if not pairs:
            raise CLIError(f"{args.data or args.behavior}: no preference pairs")
        if args.method in ("caa", "pca"):
            _warn_long_answers(pairs, args.data or args.behavior)

    model = _load_model(args)
    if not 0 <= layer < model.cfg.n_layers:
        raise CLIError(f"--layer {layer}: model {model.cfg.model_name} has layers 0..{model.cfg.n_layers - 1}")
    if config is not None and config.max_length is not None:
        _check_answer_lengths(model, pairs, config.max_length, args.data or args.behavior)
    t0 = time.perf_counter()
    history = None
    if args.method in TRAINED:
        print(f"train: {TRAINED[args.method]} on {len(pairs)} pairs at {config.hook_name}, {config.epochs} epochs, "
              f"lr {config.lr:g}, {config.precision}", file=sys.stderr)
        train = train_bipo if args.method == "bipo" else train_reps
        result = train(model, pairs, config, checkpoint_dir=args.checkpoint_dir, resume=args.resume)
        vector = result.vector
        history = result.to_dict()
    elif args.method == "actadd":
        from workbench.train.baselines import actadd

        vector = actadd(model, args.positive, args.negative, layer, hook=hook)
    else:
        from workbench.train import baselines

        kwargs = {"batch_size": args.batch_size} if args.batch_size else {}
        vector = getattr(baselines, args.method)(model, pairs, layer, hook=hook, position=args.position,
                                                 system_prompt=system_prompt, **kwargs)
    vector = dataclasses.replace(vector, metadata={**vector.metadata, "data": data_info,
                                                   "seconds": time.perf_counter() - t0})
    vector.save(args.out)
    if history is not None:
        atomic_write_json(history, f"{args.out}/history.json")
    summary = f"; final loss {history['epochs'][-1]['loss']:.4f}" if history and history["epochs"] else ""
    print(f"wrote {args.out}: {vector.describe()}{summary}", file=sys.stderr)
    return 0


LONG_ANSWER_CHARS = 2048


def _where(pair, index: int, source: str) -> str:
    """Where a pair comes from: its ``path:line`` (or ``behavior:index``), else ``pair N of SOURCE``."""
    return pair.source or f"pair {index + 1} of {source}"


def _warn_long_answers(pairs: Sequence, source: str) -> None:
    """One line on stderr when CAA/PCA will run over very long answers (every answer token is a forward position)."""
    long = [(i, p) for i, p in enumerate(pairs) if max(len(p.matching), len(p.not_matching)) > LONG_ANSWER_CHARS]
    if long:
        i, p = long[0]
        print(f"workbench train: warning: {len(long)} pair(s) have an answer over {LONG_ANSWER_CHARS} characters "
              f"(first: {_where(p, i, source)}, {max(len(p.matching), len(p.not_matching))} characters); "
              "this will be slow", file=sys.stderr)


def _check_answer_lengths(model, pairs: Sequence, max_length: int, source: str) -> None:
    """Refuse, naming the file and line, an answer that does not fit in ``--max-length`` tokens with its prompt.

    BiPO cuts prompts from the left but never an answer (``workbench.engine.scoring.tokenize_completions``);
    answers are counted as BiPO scores them, closed by the end-of-turn string.
    """
    from workbench.core.prompts import end_of_turn

    eot = end_of_turn(model)
    texts = [a + eot for p in pairs for a in (p.matching, p.not_matching)]
    lengths = [len(ids) for ids in model.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    for i, p in enumerate(pairs):
        for which, n in (("matching", lengths[2 * i]), ("not_matching", lengths[2 * i + 1])):
            if n >= max_length:
                raise CLIError(f"{_where(p, i, source)}: the {which} answer has {n} tokens, too many for "
                               f"--max-length {max_length} (answers are never cut); raise --max-length")


# --------------------------------------------------------------------------- eval
_EVAL_METRICS = ("logodds", "ab", "open", "truthfulqa", "utility", "refusal")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate steering vectors across multipliers",
        description="Evaluate one or more steering vectors at several multipliers and write a JSON result "
                    "(kind 'eval'; schema in workbench.evaluate.suite.evaluate_vectors) that 'workbench figures' "
                    "plots. Metrics: logodds (held-out preference log-odds, win rate), ab (CAA A/B "
                    "probability; A/B data), open (steered generations scored by a likelihood judge), "
                    "truthfulqa (MC1/MC2; --truthfulqa), utility (perplexity and agreement with the "
                    "unsteered model on neutral text), refusal (keyword refusal rate; --refusal-csv). "
                    "A vector whose d_model or hook does not fit the model is an error; one made on a "
                    "model of another name but the same d_model only warns (an error with --strict-model).")
    p.add_argument("--vector", action="append", required=True, metavar="DIR",
                   help="vector directory (vector.safetensors + vector.json); repeat for several")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", default=None, help="held-out preference-pair file (all of it is used)")
    src.add_argument("--behavior", default=None, help="embedded behavior (see --split)")
    p.add_argument("--format", default="auto", help="format of --data: bipo-csv, ab-json, ab-text, jsonl, "
                                                     "truthfulqa-mc1, truthfulqa-mc2 or auto (default)")
    p.add_argument("--split", default="test", choices=("train", "test", "all"), help="--behavior split (default test)")
    p.add_argument("--allow-empty-question", action="store_true",
                   help="keep --data rows whose question is empty (a few in BiPO's power/wealth CSVs)")
    _add_holdout(p, "test")
    p.add_argument("--metrics", nargs="+", default=["logodds,ab,utility"],
                   help=f"comma- or space-separated, from {','.join(_EVAL_METRICS)} (default logodds,ab,utility; "
                        "ab is skipped on free-text data only when left at the default)")
    p.add_argument("--ab-from-text", action="store_true",
                   help="ab on free-text pairs: ask each question with its two answers as choices (A) and (B) "
                        "(matching answer first for a seeded half; workbench.data.formats.as_ab_pairs)")
    p.add_argument("--multipliers", nargs="+", default=["-2", "-1", "0", "1", "2"], help="default: -2 -1 0 1 2")
    p.add_argument("--limit", type=int, default=None,
                   help="use at most N pairs, TruthfulQA questions, refusal prompts and neutral passages")
    _add_model_args(p)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: run the blocks after the vector in a bf16 copy (sums stay fp32)")
    p.add_argument("--batch-size", type=int, default=16, help="items per forward pass (default 16)")
    p.add_argument("--truthfulqa", default=None, metavar="PATH", help="TruthfulQA mc_task.json for --metrics truthfulqa")
    p.add_argument("--refusal-csv", default=None, metavar="PATH",
                   help="CSV of harmful requests with a 'goal' column (AdvBench format) for --metrics refusal")
    p.add_argument("--neutral", default=None, metavar="PATH",
                   help="text file, one passage per line, for utility (default: the embedded neutral text)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="generation length for open/refusal (default 48)")
    p.add_argument("--decodings", nargs="+", default=["greedy", "sampled"], choices=("greedy", "sampled"),
                   help="open-ended decodings (default: greedy sampled; sampled is seeded)")
    p.add_argument("--system-prompt", default=None,
                   help="system prompt (default: BiPO's 'You are a helpful, honest and concise assistant.')")
    p.add_argument("--no-system-prompt", action="store_true", help="no system turn")
    p.add_argument("--no-end-of-turn", action="store_true", help="do not append the end-of-turn token to answers")
    p.add_argument("--strict-model", action="store_true", help="a vector made on another model name is an error")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for intervals (default 1000)")
    p.add_argument("--boot-seed", "--seed", dest="seed", type=int, default=0,
                   help="seed of the bootstrap intervals and of sampled generations (--seed is the old name)")
    p.add_argument("--out", required=True, help="JSON result file (written atomically)")


def _eval_labels(vectors: Sequence) -> list[str]:
    """A label per vector: its method, or ``method:dirname`` when several share a method."""
    from collections import Counter
    from pathlib import Path

    methods = Counter(v.method for v, _ in vectors)
    labels = [v.method if methods[v.method] == 1 else f"{v.method}:{Path(p).resolve().name}" for v, p in vectors]
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab}#{seen[lab]}")
    return out


def _run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from workbench.core.io import atomic_write_json

    metrics = [m.strip() for chunk in args.metrics for m in chunk.split(",") if m.strip()]
    bad = [m for m in metrics if m not in _EVAL_METRICS]
    if bad or not metrics:
        raise CLIError(f"--metrics: unknown {bad or 'empty list'}; choose from {','.join(_EVAL_METRICS)}")
    explicit = args.metrics != ["logodds,ab,utility"]
    multipliers = _parse_multipliers(args.multipliers)
    if not multipliers:
        raise CLIError("--multipliers: give at least one number")
    for name in ("limit", "batch_size", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.n_boot < 0:
        raise CLIError(f"--n-boot must be >= 0, got {args.n_boot}")
    if args.no_system_prompt and args.system_prompt is not None:
        raise CLIError("--system-prompt and --no-system-prompt exclude each other")
    needs_pairs = [m for m in metrics if m in ("logodds", "ab", "open")]
    if needs_pairs and args.data is None and args.behavior is None:
        raise CLIError(f"metric(s) {','.join(needs_pairs)} need preference pairs: give --data PATH or --behavior NAME")
    if "truthfulqa" in metrics and args.truthfulqa is None:
        raise CLIError("--metrics truthfulqa needs --truthfulqa PATH (TruthfulQA's mc_task.json)")
    if "refusal" in metrics and args.refusal_csv is None:
        raise CLIError("--metrics refusal needs --refusal-csv PATH (a CSV with a 'goal' column)")
    _check_out("--out", args.out, kind="file")
    _check_data(args.data)

    from workbench.data.pairs import as_ab_pairs
    from workbench.data.behaviors import load_behavior
    from workbench.data.pairs import check_ab_pairs
    from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT
    from workbench.evaluate.suite import evaluate_vectors, format_eval
    from workbench.core.loading import load_model
    from workbench.core.vector import SteeringVector

    loaded = [(SteeringVector.load(path), path) for path in args.vector]
    pairs, ab_pairs, data_info = None, None, {}
    if args.data is not None or args.behavior is not None:
        if args.behavior is not None:
            pairs = load_behavior(args.behavior, args.split)
            data_info = {"behavior": args.behavior, "split": args.split}
        else:
            pairs, data_info = _data_part(args, "test")
        pairs = pairs[: args.limit]
        if not pairs:
            raise CLIError(f"{args.data or args.behavior}: no preference pairs to evaluate")
        if "ab" in metrics and args.ab_from_text:
            ab_pairs = as_ab_pairs(pairs, seed=args.seed)
        elif "ab" in metrics and explicit:
            check_ab_pairs(pairs)  # a clear error naming the first pair that is not A/B
    truthfulqa = None
    if "truthfulqa" in metrics:
        from workbench.evaluate.truthfulqa import load_truthfulqa

        if args.test_fraction is not None and not 0 < args.test_fraction < 1:
            raise CLIError(f"--test-fraction {args.test_fraction}: must be between 0 and 1")
        # with --test-fraction: the held-out questions of the split the training pairs came from
        truthfulqa = load_truthfulqa(args.truthfulqa, args.limit, test_fraction=args.test_fraction,
                                     split_seed=args.split_seed)
    refusal_prompts = None
    if "refusal" in metrics:
        from workbench.evaluate.generation import load_refusal_prompts

        refusal_prompts = load_refusal_prompts(args.refusal_csv, limit=args.limit)
    neutral = _neutral_texts(args.neutral, args.limit) if args.neutral is not None or (
        "utility" in metrics and args.limit is not None) else None

    model = _load_model(args)
    labels = _eval_labels(loaded)
    system_prompt = None if args.no_system_prompt else (args.system_prompt or DEFAULT_SYSTEM_PROMPT)
    print(f"eval: {', '.join(labels)} on {model.cfg.model_name}; metrics {','.join(metrics)}; multipliers "
          f"{' '.join(f'{m:g}' for m in multipliers)}" + (f"; {len(pairs)} pairs" if pairs else ""), file=sys.stderr)
    result = evaluate_vectors(
        model, {lab: v for lab, (v, _) in zip(labels, loaded)}, pairs, multipliers, metrics,
        system_prompt=system_prompt, append_end_of_turn=not args.no_end_of_turn, batch_size=args.batch_size,
        precision=args.precision, truthfulqa=truthfulqa, neutral_texts=neutral, refusal_prompts=refusal_prompts,
        decodings=args.decodings, max_new_tokens=args.max_new_tokens, n_boot=args.n_boot, seed=args.seed,
        on_inapplicable="error" if explicit else "skip", strict_model_name=args.strict_model, ab_pairs=ab_pairs,
        sources={lab: str(p) for lab, (_, p) in zip(labels, loaded)}, data_info=data_info, progress=True)
    atomic_write_json(result, args.out)
    print(format_eval(result))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- sweep
def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="layer sweep of CAA or BiPO vectors",
                       description="Make a CAA or BiPO vector at each layer and measure its norm, its cosine "
                                   "to the previous layer's (or a reference layer's) vector and its steering "
                                   "effect: the change of the mean held-out log-odds at each multiplier.")
    p.add_argument("--method", choices=("caa", "bipo"), default="caa")
    p.add_argument("--layers", default=None, help="e.g. 0-29, 0,5,10 or 10-20:2 (default: every layer)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", default=None, help="preference-pair file (split into train/held-out)")
    src.add_argument("--behavior", default=None, help="embedded behavior (its own train/test split)")
    p.add_argument("--format", default="auto", help="format of --data (bipo-csv, ab-json, jsonl ...; default auto)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="held-out share of --data (default 0.2)")
    p.add_argument("--allow-empty-question", action="store_true",
                   help="keep --data rows whose question is empty (a few in BiPO's power/wealth CSVs)")
    p.add_argument("--split-seed", "--seed", dest="split_seed", type=int, default=0,
                   help="seed of the --data split (--seed is the old name)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED",
                   help="BiPO seeds, one vector per layer and seed (default 0; CAA ignores them)")
    p.add_argument("--limit", type=int, default=None, help="use at most N training pairs")
    p.add_argument("--eval-limit", type=int, default=None, help="use at most N held-out pairs")
    p.add_argument("--multipliers", nargs="+", default=["-1", "1"], help="default: -1 1")
    p.add_argument("--hook", default="resid_post", help="hook point in each block (default resid_post)")
    p.add_argument("--position", default="answer_mean", help="CAA position rule (default answer_mean)")
    p.add_argument("--reference-layer", type=int, default=None, help="add cos_ref: cosine to this layer's vector")
    p.add_argument("--epochs", type=int, default=None, help="BiPO epochs (default: BiPOConfig's)")
    p.add_argument("--lr", type=float, default=None, help="BiPO learning rate (default: BiPOConfig's)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass (default 8)")
    _add_model_args(p)
    p.add_argument("--out", required=True, help="JSON file for the table")
    p.add_argument("--save-vectors", default=None, metavar="DIR", help="also save each vector to DIR/layer_LL")
    _add_executor_args(p)


def _add_executor_args(p: argparse.ArgumentParser, cells_dir: bool = True) -> None:
    """``--executor`` and the Slurm options of a study run as cells (``workbench.studies.cells``)."""
    g = p.add_argument_group("cells and cluster (workbench.studies.cells)")
    g.add_argument("--executor", choices=("inline", "debug", "local", "slurm"), default="inline",
                   help="inline (default): this process; local: one subprocess per job; slurm: sbatch job arrays; "
                        "debug: submitit's debug executor")
    if cells_dir:
        g.add_argument("--cells-dir", default=None, metavar="DIR",
                       help="where each (data, method, layer, seed) cell is written and found again after a kill "
                            "(default: OUT without .json, plus _cells); implied by --executor other than inline or "
                            "several --seeds")
    g.add_argument("--partition", default=None, help="Slurm partition")
    g.add_argument("--gpus-per-task", type=int, default=0, help="GPUs per Slurm task (default 0)")
    g.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per Slurm task")
    g.add_argument("--time", type=int, default=60, metavar="MINUTES", help="time limit per job (default 60)")
    g.add_argument("--array-parallelism", type=int, default=64, help="Slurm jobs running at once (default 64)")


def _run_sweep_cells(args: argparse.Namespace, multipliers: list[float], source: str) -> int:
    """The sweep as cells: vectors and effects per (data, layer, seed), then one aggregated result."""
    import time
    from pathlib import Path

    from workbench.studies.cells import SlurmOptions, StudySpec, aggregate, run_study
    from workbench.core.io import atomic_write_json
    from workbench.analysis.sweep import parse_layers

    t0 = time.perf_counter()
    model = None
    if args.layers in (None, "all"):
        if args.model is not None or args.executor == "inline":
            model = _load_model(args)
            n_layers = model.cfg.n_layers
        else:
            from workbench.core.loading import EMBEDDED_N_LAYERS

            n_layers = EMBEDDED_N_LAYERS
        spec_layers = f"0-{n_layers - 1}"
    else:
        spec_layers = args.layers
    layers = parse_layers(spec_layers, None)
    bipo = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None}
    spec = StudySpec(data=(args.behavior or str(args.data),), method=args.method, layers=tuple(layers),
                     seeds=tuple(args.seeds), model=args.model, device=args.device, dtype=args.dtype, hook=args.hook,
                     position=args.position, multipliers=tuple(multipliers), n_train=args.limit, n_test=args.eval_limit,
                     data_format=args.format, test_fraction=args.test_fraction, split_seed=args.split_seed,
                     allow_empty_question=args.allow_empty_question, bipo=bipo, batch_size=args.batch_size)
    root = Path(args.cells_dir) if args.cells_dir else Path(args.out).with_name(Path(args.out).stem + "_cells")
    if args.executor == "inline" and model is None:
        model = _load_model(args)
    slurm = SlurmOptions(partition=args.partition, gpus_per_task=args.gpus_per_task, cpus_per_task=args.cpus_per_task,
                         time_min=args.time, array_parallelism=args.array_parallelism)
    print(f"sweep: {args.method} at {len(layers)} layers x {len(spec.seeds) if args.method == 'bipo' else 1} "
          f"seed(s) from {source} as cells in {root} ({args.executor})", file=sys.stderr)
    summary = run_study(spec, root, executor=args.executor, model=model, slurm=slurm)
    print(f"sweep: {len(summary['ran'])} cell(s) run, {summary['complete_before']} of {summary['cells']} already "
          f"complete", file=sys.stderr)
    out = aggregate(spec, root) | {"run": summary, "data_source": source, "seconds": time.perf_counter() - t0}
    atomic_write_json(out, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _run_sweep(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    _check_out("--out", args.out, kind="file")
    _check_out("--save-vectors", args.save_vectors, kind="dir")
    _check_data(getattr(args, "data", None))

    from workbench.data.behaviors import load_behavior
    from workbench.data.formats import load_pairs
    from workbench.data.pairs import train_test_split
    from workbench.core.io import atomic_write_json
    from workbench.core.loading import load_model
    from workbench.analysis.sweep import format_sweep, layer_sweep, parse_layers

    multipliers = _parse_multipliers(args.multipliers)
    for name in ("limit", "eval_limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.method == "caa" and (args.epochs is not None or args.lr is not None):
        raise CLIError("--epochs and --lr apply to --method bipo only")
    if args.behavior is not None:
        train, held_out = load_behavior(args.behavior, "train"), load_behavior(args.behavior, "test")
        source = f"behavior:{args.behavior}"
    else:
        train, held_out = train_test_split(load_pairs(args.data, args.format, **_data_kw(args)), args.test_fraction,
                                           args.split_seed)
        source = str(args.data)
    train, held_out = train[: args.limit], held_out[: args.eval_limit]
    if not held_out:
        raise CLIError(f"{source}: no held-out pairs to measure the effect on (raise --test-fraction)")
    if args.executor != "inline" or len(args.seeds) > 1 or args.cells_dir:
        return _run_sweep_cells(args, multipliers, source)
    t0 = time.perf_counter()
    model = _load_model(args)
    layers = parse_layers(args.layers if args.layers is not None else f"0-{model.cfg.n_layers - 1}",
                          model.cfg.n_layers)
    if args.reference_layer is not None and args.reference_layer not in layers:
        raise CLIError(f"--reference-layer {args.reference_layer} is not one of the swept layers {layers}")
    config = None
    if args.method == "bipo":
        from workbench.train.bipo import BiPOConfig

        changes = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None}
        config = dataclasses.replace(BiPOConfig(seed=args.seeds[0]), **changes)
    print(f"sweep: {args.method} at {len(layers)} layers of {model.cfg.model_name}, {len(train)} training "
          f"and {len(held_out)} held-out pairs from {source}", file=sys.stderr)
    result = layer_sweep(model, train, held_out, layers, method=args.method, multipliers=multipliers,
                         hook=args.hook, reference=args.reference_layer, bipo_config=config,
                         position=args.position, batch_size=args.batch_size, progress=True)
    out = result.to_dict()
    out.update(data=source, bipo_config=config.to_dict() if config else None,
               seconds=time.perf_counter() - t0)
    if args.save_vectors:
        out["vectors"] = result.save_vectors(args.save_vectors)
    atomic_write_json(out, args.out)
    print(format_sweep(result.table))
    print(f"wrote {args.out}" + (f" and {len(layers)} vectors under {args.save_vectors}" if args.save_vectors else ""),
          file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- figures
def _add_figures(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("figures", help="draw every figure from saved JSON results (PNG + PDF; never re-trains)")
    p.add_argument("--results", required=True, help="directory searched recursively for result *.json files")
    p.add_argument("--out", default="figures", help="output directory (default: figures/)")
    p.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=["png", "pdf", "svg"],
                   help="file formats to write (default: png pdf)")


def _run_figures(args: argparse.Namespace) -> int:
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    from workbench.viz.figures import write_figures

    if not Path(args.results).is_dir():
        raise CLIError(f"--results {args.results}: no such directory")
    written = write_figures(args.results, args.out, formats=args.formats)
    if not written:
        from workbench.core.results import SCHEMAS

        raise CLIError(f"--results {args.results}: no result JSON with a known \"kind\" found "
                       f"({', '.join(SCHEMAS)})")
    figures = {p.with_suffix("") for p in written}
    print(f"wrote {len(figures)} figure(s), {len(written)} file(s) to {args.out}")
    return 0


# --------------------------------------------------------------------------- convert
def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", help="convert vectors: official BiPO .pt, .npy, safetensors, GGUF control vectors",
        description="Convert steering vectors between workbench vector directories, llama.cpp/repeng GGUF "
                    "control vectors (.gguf) and plain tensor files (.pt/.pth/.bin/.npy/.npz/.safetensors, "
                    "input only; .pt is read with torch.load(weights_only=True)). Several inputs and a .gguf "
                    "output give one multi-layer control vector. blocks.L.hook_resid_post <-> direction.L. "
                    "Works offline; a model is loaded only with --model.")
    p.add_argument("inputs", nargs="+", metavar="IN", help="vector directory, .gguf, or tensor file")
    p.add_argument("output", metavar="OUT", help="output .gguf file or vector directory")
    p.add_argument("--model", default=None,
                   help="load this model (name or local dir; the embedded one is 'SmolLM2-135M-Instruct') "
                        "to check d_model and layers, and record its name")
    p.add_argument("--model-name", default=None, help="model name to record, without loading the model")
    p.add_argument("--layer", type=int, default=None,
                   help="layer of a tensor file (default: from a 'layer<N>' in its name); for a .gguf input, "
                        "the one layer to take")
    p.add_argument("--hook", default="resid_post",
                   help="hook point of a tensor file: resid_post (default, BiPO/CAA), resid_pre, ... or a full name")
    p.add_argument("--d-model", type=int, default=None, help="expected vector length, checked without a model")
    p.add_argument("--key", default=None, help="which tensor of a .pt/.npz/.safetensors file holding several")
    p.add_argument("--model-hint", default=None, help="controlvector.model_hint written to a .gguf")


def _run_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from workbench.core.interchange import read_any, write_any

    model = None
    if args.model is not None:
        from workbench.core.loading import load_model

        try:
            model = load_model(args.model)
        except Exception as exc:  # offline without the hub, unknown name ...
            raise CLIError(f"--model {args.model}: cannot load it ({type(exc).__name__}: {exc}); to convert "
                           "without loading, pass --model-name NAME and --d-model N instead") from None
        if args.d_model is not None and args.d_model != model.cfg.d_model:
            raise CLIError(f"--d-model {args.d_model} disagrees with --model {args.model} "
                           f"(d_model {model.cfg.d_model})")
    if len(args.inputs) > 1 and args.layer is not None:
        raise CLIError("--layer applies to a single input")
    vectors = []
    for src in args.inputs:
        vectors += read_any(src, layer=args.layer, hook=args.hook, model_name=args.model_name,
                            d_model=args.d_model, model=model, key=args.key)
    if args.model_name and model is None:
        vectors = [v.replace(model_name=args.model_name) for v in vectors]
    if len(vectors) > 1 and Path(args.output).suffix.lower() != ".gguf":
        logging.getLogger(__name__).info("writing %d vectors into subdirectories of %s", len(vectors), args.output)
    for path in write_any(vectors, args.output, model_hint=args.model_hint):
        print(f"wrote {path}")
    for v in vectors:
        print(f"  {v.hook_name}  d_model {v.d_model}  norm {v.norm:.4g}  method {v.method}  model {v.model_name}")
    return 0


# --------------------------------------------------------------------------- demo
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the main job: BiPO and CAA on the embedded model and data, evaluated",
        description="Train a BiPO vector and extract a CAA vector for one embedded behavior on its train split "
                    "(embedded SmolLM2-135M-Instruct, offline), evaluate both on the held-out test split at "
                    "multipliers -2..2 (preference log-odds; A/B probability with the two answers as choices (A) "
                    "and (B); perplexity and "
                    "agreement with the unsteered model on neutral text), print the tables and write "
                    "OUT/vectors/<behavior>/L<layer>/{bipo,caa} (BiPO's history.json beside it), OUT/eval.json and "
                    "OUT/logodds.png (workbench.studies.reproduce.demo).")
    p.add_argument("--behavior", default="power-seeking", help="embedded behavior (default power-seeking)")
    p.add_argument("--layer", type=int, default=None, help="block of the resid_post hook (default: BiPOConfig's, 14)")
    p.add_argument("--epochs", type=int, default=None, help="BiPO epochs (default: BiPOConfig's)")
    p.add_argument("--multipliers", nargs="+", default=["-2", "-1", "0", "1", "2"], help="default: -2 -1 0 1 2")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="BiPO training and evaluation precision of the blocks after the vector")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes for smoke tests: 8 train pairs, 4 test pairs, 1 epoch, 4 short passages")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    _add_model_args(p)


def _run_demo(args: argparse.Namespace) -> int:
    import dataclasses
    import time
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    from workbench.data.behaviors import list_behaviors
    from workbench.evaluate.suite import format_eval
    from workbench.studies.reproduce import StudyConfig, demo

    t_start = time.perf_counter()
    multipliers = _parse_multipliers(args.multipliers)
    if args.behavior not in list_behaviors():
        raise CLIError(f"--behavior {args.behavior!r}: choose one of {', '.join(list_behaviors())}")
    if args.epochs is not None and args.epochs < 1:
        raise CLIError(f"--epochs must be >= 1, got {args.epochs}")
    changes = {k: v for k, v in (("layer", args.layer), ("epochs", args.epochs)) if v is not None}
    config = dataclasses.replace(StudyConfig.demo(args.behavior, quick=args.quick), multipliers=tuple(multipliers),
                                 precision=args.precision, **changes)
    try:
        bipo_config = config.bipo_config()
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    out = Path(args.out)

    model = _load_model(args)
    if config.layer >= model.cfg.n_layers:
        raise CLIError(f"--layer {config.layer}: {model.cfg.model_name} has layers 0..{model.cfg.n_layers - 1}")
    print(f"demo: {args.behavior} on {model.cfg.model_name}: {config.n_train or 'all'} train / "
          f"{config.n_test or 'all'} test pairs, layer {config.layer} {config.hook}, BiPO {bipo_config.epochs} "
          f"epoch(s), lr {bipo_config.lr}", file=sys.stderr)
    result = demo(out, config, model=model, progress=True)
    print(format_eval(result))
    print(f"\nwrote {out / 'eval.json'}, {out / 'logodds.png'} and vectors under {out / 'vectors'}; "
          f"total {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- reproduce
def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="run the whole study on the embedded model and data, then draw its figures")
    p.add_argument("--out", default="results", help="results directory (default: results/)")
    p.add_argument("--figures", default="figures", help="figures directory (default: figures/)")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 behaviors, 8 pairs, 1 epoch, 3 layers")
    _add_model_args(p)
    p.add_argument("--behaviors", nargs="+", default=None, help="embedded behaviors (default: all)")
    p.add_argument("--layer", type=int, default=None, help="layer of the main vectors (default: 14)")
    p.add_argument("--stages", nargs="+", default=None, help="subset of: vectors eval compare sweep cosine "
                   "logit_lens composition transfer lora_transfer refusal truthfulness figures (default: all)")
    p.add_argument("--truthfulqa", default=None, metavar="PATH",
                   help="TruthfulQA mc_task.json for the truthfulness stage (without it the stage is skipped)")
    p.add_argument("--force", action="store_true", help="recompute stages whose JSON already exists")
    p.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                   help="BiPO seeds of the study's vectors, made as cells and aggregated into seeds.json "
                        "(default: the study's seed only)")
    _add_executor_args(p, cells_dir=False)


def _run_reproduce(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    import matplotlib

    matplotlib.use("Agg")
    from workbench.studies.reproduce import STAGES, StudyConfig, reproduce

    config = StudyConfig.quick() if args.quick else StudyConfig()
    if args.truthfulqa is not None and not Path(args.truthfulqa).is_file():
        raise CLIError(f"--truthfulqa {args.truthfulqa}: no such file")
    changes = {k: v for k, v in (("behaviors", tuple(args.behaviors) if args.behaviors else None),
                                 ("layer", args.layer), ("truthfulqa", args.truthfulqa)) if v is not None}
    try:
        config = dataclasses.replace(config, **changes)
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    stages = tuple(args.stages) if args.stages else STAGES
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise CLIError(f"--stages: unknown stage(s) {bad}; valid: {' '.join(STAGES)}")
    model = None
    if args.executor == "inline" and (args.model is not None or args.device != "cpu" or args.dtype != "fp32"
                                      or args.n_devices != 1):
        model = _load_model(args)
    if args.seeds and config.seed not in args.seeds:
        raise CLIError(f"--seeds {' '.join(map(str, args.seeds))}: must include the study's seed {config.seed}")
    from workbench.studies.cells import SlurmOptions

    slurm = SlurmOptions(partition=args.partition, gpus_per_task=args.gpus_per_task, cpus_per_task=args.cpus_per_task,
                         time_min=args.time, array_parallelism=args.array_parallelism)
    t0 = time.perf_counter()
    summary = reproduce(args.out, config, model=model, figures_dir=args.figures, stages=stages, force=args.force,
                        log=lambda line: print(line, flush=True), executor=args.executor, seeds=args.seeds,
                        cells_model=(args.model, args.device, args.dtype), slurm=slurm)
    print(f"{len(summary['results'])} result file(s) in {args.out}, {len(summary['figures'])} figure file(s) in "
          f"{args.figures}; {time.perf_counter() - t0:.0f} s")
    return 0


# --------------------------------------------------------------------------- report
def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="print markdown tables of saved results (nothing is recomputed)")
    p.add_argument("--results", required=True, help="directory searched recursively for result *.json files")
    p.add_argument("--out", default=None, help="also write the markdown to this file (atomically)")
    p.add_argument("--kind", nargs="+", default=None, metavar="KIND",
                   help="only results of these kinds (e.g. matched_cost refusal)")


def _run_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from workbench.viz.report import report

    if not Path(args.results).is_dir():
        raise CLIError(f"--results {args.results}: no such directory")
    if args.kind:
        from workbench.core.results import SCHEMAS

        bad = [k for k in args.kind if k not in SCHEMAS]
        if bad:
            raise CLIError(f"--kind: unknown {bad}; kinds: {' '.join(sorted(SCHEMAS))}")
    text = report(args.results, kinds=args.kind)
    if args.out:
        from workbench.core.io import atomic_write

        atomic_write(args.out, lambda tmp: tmp.write_text(text))
    print(text, end="")
    return 0


def _neutral_texts(path: str | None, limit: int | None) -> list[str]:
    """The ``--neutral`` file's passages (one per line), or the embedded neutral text; first ``limit``."""
    if path is None:
        from workbench.data.behaviors import load_neutral_text

        texts = load_neutral_text()
    else:
        if not Path(path).is_file():
            raise CLIError(f"--neutral {path}: no such file")
        texts = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not texts:
            raise CLIError(f"--neutral {path}: no non-empty lines")
    return texts[:limit]


def _add_refusal(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("refusal", help="refusal rate and likelihood refusal signal over multipliers, "
                                       "with and without jailbreak templates")
    p.add_argument("--vector", action="append", required=True, help="vector directory (repeat for several)")
    p.add_argument("--data", default=None, help="AdvBench-format CSV (goal,target); default: the embedded "
                                                "requests' held-out split")
    p.add_argument("--format", default="advbench", help=argparse.SUPPRESS)
    _add_holdout(p, "held-out")
    p.add_argument("--limit", type=int, default=None, help="use at most this many requests")
    p.add_argument("--templates", default="none,refusal_suppression,persona",
                   help="comma-separated: none and names of workbench.studies.refusal.JAILBREAK_TEMPLATES")
    p.add_argument("--multipliers", nargs="+", default=["-2", "-1", "0", "1", "2"])
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--neutral", default=None, metavar="PATH",
                   help="neutral text file, one passage per line, for the utility cost at every point "
                        "(default: the embedded neutral text)")
    p.add_argument("--no-utility", action="store_true", help="skip the utility cost (KL, perplexity)")
    p.add_argument("--no-text", action="store_true",
                   help="leave the requests' and the answers' text out of the result (each answer keeps its "
                        "vector, template, multiplier, item and refused flag): for data whose text must not be "
                        "committed or shared, such as AdvBench")
    p.add_argument("--out", required=True, help="result JSON (kind 'refusal')")
    _add_model_args(p)


def _run_refusal(args: argparse.Namespace) -> int:
    from workbench.core.io import atomic_write_json
    from workbench.data.refusal import JAILBREAK_TEMPLATES, HarmfulRequest, load_refusal_requests
    from workbench.studies.refusal import refusal_study

    templates = [t.strip() for t in args.templates.split(",") if t.strip()]
    bad = [t for t in templates if t != "none" and t not in JAILBREAK_TEMPLATES]
    if bad or not templates:
        raise CLIError(f"--templates: unknown {bad or 'empty list'}; choose from none,{','.join(JAILBREAK_TEMPLATES)}")
    multipliers = _parse_multipliers(args.multipliers)
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be >= 1, got {args.limit}")
    if args.data is not None:
        pairs, info = _data_part(args, "test")
        requests = [HarmfulRequest(p.question, p.not_matching, p.source) for p in pairs]
    else:
        requests, info = load_refusal_requests("test"), {"behavior": "refusal", "split": "test"}
    requests = requests[: args.limit]

    from workbench.core.loading import load_model
    from workbench.core.vector import SteeringVector

    loaded = [(SteeringVector.load(path), path) for path in args.vector]
    vectors = dict(zip(_eval_labels(loaded), (v for v, _ in loaded)))
    model = _load_model(args)
    for v in vectors.values():
        v.check_compatible(model)
    result = refusal_study(model, vectors, requests, multipliers,
                           templates=[None if t == "none" else t for t in templates],
                           max_new_tokens=args.max_new_tokens, n_boot=args.n_boot, progress=True,
                           neutral_texts=None if args.no_utility else _neutral_texts(args.neutral, None))
    result["data"] = info
    if args.no_text:
        from workbench.studies.refusal import without_text

        result = without_text(result)
    atomic_write_json(result, args.out)
    from workbench.viz.report import markdown_table
    import pandas as pd

    table = pd.DataFrame(result["rows"])
    table = table[[c for c in ("vector", "template", "multiplier", "refusal_rate", "logodds", "logodds_ci_low",
                               "logodds_ci_high", "kl", "perplexity") if c in table.columns]]
    print(markdown_table(table, digits=3))
    print(f"wrote {args.out}")
# --------------------------------------------------------------------------- compare
def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="steering effect of several vectors at equal utility cost (matched cost)",
                       description="For each vector and direction, find the multipliers where the cost on neutral "
                                   "text reaches each budget and report the held-out log-odds shift there "
                                   "(kind 'matched_cost'; workbench.analysis.equal_cost).")
    p.add_argument("--vector", action="append", required=True, metavar="DIR", help="vector directory; repeat")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", default=None, help="held-out preference-pair file")
    src.add_argument("--behavior", default=None, help="embedded behavior (see --split)")
    p.add_argument("--format", default="auto", help="format of --data (as for eval)")
    p.add_argument("--split", default="test", choices=("train", "test", "all"), help="--behavior split (default test)")
    p.add_argument("--allow-empty-question", action="store_true", help="keep --data rows with an empty question")
    _add_holdout(p, "test")
    p.add_argument("--cost", default="kl", help="kl (default) or perplexity")
    p.add_argument("--budgets", nargs="+", default=None, help="cost budgets (default kl: 0.05 0.1 0.2 0.5; "
                                                              "perplexity: 0.05 0.1 0.25)")
    p.add_argument("--equal-norm", default=None, metavar="REF|NUMBER",
                   help="rescale every vector to the norm of vector REF (its label) or to NUMBER")
    p.add_argument("--max-multiplier", type=float, default=64.0, help="bound of the search (default 64)")
    p.add_argument("--rel-tol", type=float, default=0.05, help="relative tolerance on the budget (default 0.05)")
    p.add_argument("--limit", type=int, default=None, help="at most N held-out pairs")
    p.add_argument("--neutral", default=None, metavar="PATH", help="neutral text file, one passage per line")
    p.add_argument("--texts", type=int, default=16, help="neutral passages of the cost search (default 16)")
    p.add_argument("--text-tokens", type=int, default=64, help="tokens per passage in the cost search (default 64)")
    _add_model_args(p)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--boot-seed", "--seed", dest="seed", type=int, default=0,
                   help="bootstrap seed (--seed is the old name)")
    p.add_argument("--out", required=True, help="JSON result file (written atomically)")


def _run_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from workbench.data.behaviors import load_behavior
    from workbench.core.io import atomic_write_json
    from workbench.analysis.equal_cost import check_budgets, cost_effect_table, matched_cost
    from workbench.core.loading import load_model
    from workbench.viz.report import markdown_table
    from workbench.core.vector import SteeringVector

    budgets = None if args.budgets is None else _parse_multipliers(args.budgets)
    try:
        budgets = check_budgets(budgets, args.cost)
    except ValueError as exc:
        raise CLIError(f"--{'cost' if 'cost=' in str(exc) else 'budgets'}: {exc}") from None
    for name in ("limit", "texts", "text_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    loaded = [(SteeringVector.load(path), path) for path in args.vector]
    labels = _eval_labels(loaded)
    equal_norm = args.equal_norm
    if equal_norm is not None and equal_norm not in labels:
        try:
            equal_norm = float(equal_norm)
        except ValueError:
            raise CLIError(f"--equal-norm {equal_norm!r}: neither a vector label ({', '.join(labels)}) "
                           "nor a number") from None
    pairs = load_behavior(args.behavior, args.split) if args.behavior else _data_part(args, "test")[0]
    pairs = pairs[: args.limit]
    if not pairs:
        raise CLIError(f"{args.data or args.behavior}: no preference pairs")
    texts = _neutral_texts(args.neutral, args.texts)
    model = _load_model(args)
    result = matched_cost(model, {lab: v for lab, (v, _) in zip(labels, loaded)}, pairs, texts, cost=args.cost,
                          budgets=budgets, equal_norm=equal_norm, max_multiplier=args.max_multiplier,
                          rel_tol=args.rel_tol, n_boot=args.n_boot, seed=args.seed,
                          utility_kw={"max_tokens": args.text_tokens})
    result["sources"] = {lab: str(p) for lab, (_, p) in zip(labels, loaded)}
    atomic_write_json(result, args.out)
    print(markdown_table(cost_effect_table(result)))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- main
COMMANDS = ("info", "train", "eval", "sweep", "figures", "convert", "demo", "reproduce", "report", "refusal",
            "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="A TransformerLens workbench for steering vectors.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        globals()[f"_add_{name}"](sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(globals()[f"_run_{args.command}"](args) or 0)
    except KeyboardInterrupt:
        print(f"workbench {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: one line, the traceback only with -v
        message, code = _describe_exception(exc)
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"workbench {args.command}: error: {' '.join(message.split())}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
