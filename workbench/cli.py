"""The ``workbench`` command: train, eval, sweep, figures, convert, demo, info.

Each subcommand has an ``_add_<name>(subparsers)`` that declares its arguments and a
``_run_<name>(args) -> int`` that runs it; heavy imports happen inside the run functions so that
``workbench --help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence



class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def _parse_multipliers(values: Sequence[str]) -> list[float]:
    out = []
    for v in values:
        try:
            out.append(float(v))
        except ValueError:
            raise CLIError(f"--multipliers: {v!r} is not a number") from None
    return out


# --------------------------------------------------------------------------- info
def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="load a model and print its shape and hook points")
    p.add_argument("--model", default=None, help="model name or local directory (default: embedded)")


def _run_info(args: argparse.Namespace) -> int:
    import time

    from workbench.model import load_model
    from workbench.vector import valid_hook_names

    t0 = time.perf_counter()
    model = load_model(args.model)
    dt = time.perf_counter() - t0
    hooks = valid_hook_names(model)
    print(f"model {model.cfg.model_name}: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
          f"vocab {model.cfg.d_vocab}; loaded in {dt:.1f} s")
    print(f"{len(hooks)} steering hook points, e.g. {hooks[0]} ... {hooks[-1]}")
    return 0


# --------------------------------------------------------------------------- train
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or extract a steering vector (bipo, caa, actadd, pca)")
    p.set_defaults(_unimplemented=True)


def _run_train(args: argparse.Namespace) -> int:
    raise CLIError("train is not implemented yet")


# --------------------------------------------------------------------------- eval
def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate steering vectors across multipliers")
    p.set_defaults(_unimplemented=True)


def _run_eval(args: argparse.Namespace) -> int:
    raise CLIError("eval is not implemented yet")


# --------------------------------------------------------------------------- sweep
def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="layer sweep of CAA or BiPO vectors")
    p.set_defaults(_unimplemented=True)


def _run_sweep(args: argparse.Namespace) -> int:
    raise CLIError("sweep is not implemented yet")


# --------------------------------------------------------------------------- figures
def _add_figures(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("figures", help="draw every figure from saved JSON results")
    p.set_defaults(_unimplemented=True)


def _run_figures(args: argparse.Namespace) -> int:
    raise CLIError("figures is not implemented yet")


# --------------------------------------------------------------------------- convert
def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert vectors: official BiPO .pt, .npy, safetensors, GGUF control vectors")
    p.set_defaults(_unimplemented=True)


def _run_convert(args: argparse.Namespace) -> int:
    raise CLIError("convert is not implemented yet")


# --------------------------------------------------------------------------- demo
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: BiPO and CAA on the embedded model and data, evaluated")
    p.set_defaults(_unimplemented=True)


def _run_demo(args: argparse.Namespace) -> int:
    raise CLIError("demo is not implemented yet")


# --------------------------------------------------------------------------- main
COMMANDS = ("info", "train", "eval", "sweep", "figures", "convert", "demo")


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
    except CLIError as exc:
        print(f"workbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"workbench {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
