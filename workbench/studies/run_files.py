"""The ``workbench info``, ``convert``, ``figures`` and ``report`` runs: models, vector files and saved results.

``convert`` moves steering vectors between workbench vector directories, llama.cpp/repeng GGUF control
vectors and plain tensor files (``workbench.core.interchange``; BiPO's released ``.pt`` vectors, Cao et al.
2024, arXiv 2406.00045); ``figures`` and ``report`` draw and tabulate saved results without recomputing
anything (``workbench.viz``); ``info`` loads a model and describes its hook points.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from workbench.core import loading  # the module, not its function: load_model is looked up at each call
from workbench.core.interchange import read_any, write_any
from workbench.core.io import atomic_write
from workbench.core.results import SCHEMAS
from workbench.core.vector import SteeringVector, valid_hook_names
from workbench.studies.runs import Log, ModelOptions, RunError, check_out, silent
from workbench.viz.figures import write_figures
from workbench.viz.report import report

logger = logging.getLogger(__name__)


def info_run(config: ModelOptions) -> list[str]:
    """Load the model and describe it: its shape, load time and steering hook points (one line each)."""
    t0 = time.perf_counter()
    model = config.load_model()
    dt = time.perf_counter() - t0
    hooks = valid_hook_names(model)
    return [f"model {model.cfg.model_name}: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
            f"vocab {model.cfg.d_vocab}; loaded in {dt:.1f} s",
            f"{len(hooks)} steering hook points, e.g. {hooks[0]} ... {hooks[-1]}"]


@dataclass(kw_only=True)
class ConvertRun:
    """Options of ``workbench convert``."""

    inputs: Sequence[str]  # vector directories, .gguf or tensor files
    output: str  # output .gguf file or vector directory
    model: str | None = None  # load this model to check d_model and layers, and record its name
    model_name: str | None = None  # model name to record, without loading the model
    layer: int | None = None  # layer of a tensor file; for a .gguf input, the one layer to take
    hook: str = "resid_post"  # hook point of a tensor file
    d_model: int | None = None  # expected vector length, checked without a model
    key: str | None = None  # which tensor of a file holding several
    model_hint: str | None = None  # controlvector.model_hint written to a .gguf


def convert_run(config: ConvertRun, log: Log = silent) -> tuple[list[SteeringVector], list[Path]]:
    """Read every input, write them to ``config.output``; returns the vectors and the paths written."""
    model = None
    if config.model is not None:
        try:
            model = loading.load_model(config.model)
        except Exception as exc:  # offline without the hub, unknown name ...
            raise RunError(f"--model {config.model}: cannot load it ({type(exc).__name__}: {exc}); to convert "
                           "without loading, pass --model-name NAME and --d-model N instead") from None
        if config.d_model is not None and config.d_model != model.cfg.d_model:
            raise RunError(f"--d-model {config.d_model} disagrees with --model {config.model} "
                           f"(d_model {model.cfg.d_model})")
    if len(config.inputs) > 1 and config.layer is not None:
        raise RunError("--layer applies to a single input")
    vectors: list[SteeringVector] = []
    for src in config.inputs:
        vectors += read_any(src, layer=config.layer, hook=config.hook, model_name=config.model_name,
                            d_model=config.d_model, model=model, key=config.key)
    if config.model_name and model is None:
        vectors = [v.replace(model_name=config.model_name) for v in vectors]
    if len(vectors) > 1 and Path(config.output).suffix.lower() != ".gguf":
        logger.info("writing %d vectors into subdirectories of %s", len(vectors), config.output)
    return vectors, write_any(vectors, config.output, model_hint=config.model_hint)


#: the exit code of ``figures`` and ``report`` when they wrote their output but skipped a result
SKIPPED_EXIT = 3


def _nothing_read(results: str, skipped: list[tuple[Path, str]], found: str) -> RunError:
    """The error when no result was drawn or tabulated: the first file skipped and why, or ``found``."""
    if not skipped:
        return RunError(f"--results {results}: {found}")
    more = f" (and {len(skipped) - 1} more skipped)" if len(skipped) > 1 else ""
    path, reason = skipped[0]
    return RunError(f"--results {results}: no result could be read: {path}: {reason}{more}")


def _warn(skipped: list[tuple[Path, str]], log: Log) -> None:
    for path, reason in skipped:
        log(f"warning: {path}: {reason}; skipped")


def figures_run(results: str, out: str = "figures", formats: Sequence[str] = ("png", "pdf"),
                log: Log = silent) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Draw every figure of the results under ``results`` into ``out``.

    A result that cannot be read or drawn is skipped with one warning line (``log``) naming the file and why,
    and the others are drawn, as ``report_run`` does; when nothing could be drawn it is a ``RunError``.

    Returns:
        The files written and the results skipped (``(path, why)``; the command exits ``SKIPPED_EXIT``).
    """
    if not Path(results).is_dir():
        raise RunError(f"--results {results}: no such directory")
    out = check_out("--out", out, kind="dir")
    skipped: list[tuple[Path, str]] = []
    written = write_figures(results, out, formats=list(formats), on_skip=lambda p, why: skipped.append((p, why)))
    if not written:
        raise _nothing_read(results, skipped, f"no result JSON with a known \"kind\" found ({', '.join(SCHEMAS)})")
    _warn(skipped, log)
    return written, skipped


def report_run(results: str, out: str | None = None, kind: Sequence[str] | None = None,
               log: Log = silent) -> tuple[str, list[tuple[Path, str]]]:
    """Markdown tables of the results under ``results`` (only kinds ``kind``), also written to ``out``.

    A result that cannot be read or tabulated is skipped with one warning line (``log``) naming the file and
    why, and the others are reported, as ``figures_run`` does; when nothing could be reported it is a
    ``RunError``.

    Returns:
        The markdown and the results skipped (``(path, why)``; the command exits ``SKIPPED_EXIT``).
    """
    if not Path(results).is_dir():
        raise RunError(f"--results {results}: no such directory")
    if kind:
        bad = [k for k in kind if k not in SCHEMAS]
        if bad:
            raise RunError(f"--kind: unknown {bad}; kinds: {' '.join(sorted(SCHEMAS))}")
    out = check_out("--out", out, kind="file")
    skipped: list[tuple[Path, str]] = []
    text = report(results, kinds=kind, on_skip=lambda p, why: skipped.append((p, why)))
    if not text.strip():
        kinds = f" of kind {' '.join(kind)}" if kind else ""
        raise _nothing_read(results, skipped, f"no result JSON{kinds} found")
    _warn(skipped, log)
    if out:
        atomic_write(out, lambda tmp: tmp.write_text(text))
    return text, skipped


__all__ = ["SKIPPED_EXIT", "ConvertRun", "convert_run", "figures_run", "info_run", "report_run"]
