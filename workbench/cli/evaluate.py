"""``workbench eval``, ``compare`` and ``refusal``: saved vectors measured over multipliers."""

from __future__ import annotations

import argparse
import sys

from workbench.cli.common import config, echo, numbers


def run_eval(args: argparse.Namespace) -> None:
    """``workbench.studies.run_evaluate.evaluate_run`` on the flags; prints the result's tables."""
    from workbench.evaluate.suite import format_eval
    from workbench.studies.run_evaluate import EvalRun, evaluate_run

    result = evaluate_run(config(EvalRun, args, multipliers=numbers("--multipliers", args.multipliers)),
                          log=echo("eval"))
    print(format_eval(result))


def run_compare(args: argparse.Namespace) -> None:
    """``workbench.studies.run_evaluate.compare_run`` on the flags; prints the matched-cost table."""
    from workbench.studies.run_evaluate import CompareRun, compare_run, format_compare

    result = compare_run(config(CompareRun, args, budgets=numbers("--budgets", args.budgets)), log=echo("compare"))
    print(format_compare(result))
    print(f"wrote {args.out}", file=sys.stderr)


def run_refusal(args: argparse.Namespace) -> None:
    """``workbench.studies.run_evaluate.refusal_run`` on the flags; prints the refusal table."""
    from workbench.studies.run_evaluate import RefusalRun, format_refusal, refusal_run

    result = refusal_run(config(RefusalRun, args, multipliers=numbers("--multipliers", args.multipliers)),
                         log=echo("refusal"))
    print(format_refusal(result))
    print(f"wrote {args.out}")
