"""``workbench sweep``, ``demo`` and ``reproduce``: layer sweeps and the study."""

from __future__ import annotations

import argparse
import sys

from workbench.cli.common import config, echo, headless, numbers


def run_sweep(args: argparse.Namespace) -> None:
    """``workbench.studies.run_studies.sweep_run`` on the flags; prints the sweep table."""
    from workbench.analysis.sweep import format_sweep
    from workbench.studies.run_studies import SweepRun, sweep_run

    _, swept = sweep_run(config(SweepRun, args, multipliers=numbers("--multipliers", args.multipliers)), echo("sweep"))
    if swept is not None:
        print(format_sweep(swept))


def run_demo(args: argparse.Namespace) -> None:
    """``workbench.studies.run_studies.demo_run`` on the flags; prints the evaluation's tables."""
    headless()
    from workbench.evaluate.suite import format_eval
    from workbench.studies.run_studies import DemoRun, demo_run

    result = demo_run(config(DemoRun, args, multipliers=numbers("--multipliers", args.multipliers)), echo("demo"))
    print(format_eval(result))


def run_reproduce(args: argparse.Namespace) -> None:
    """``workbench.studies.run_studies.reproduce_run`` on the flags; its progress and a summary on stdout."""
    headless()
    from workbench.studies.run_studies import ReproduceRun, reproduce_run

    summary = reproduce_run(config(ReproduceRun, args), log=echo("reproduce", sys.stdout))
    print(f"{len(summary['results'])} result file(s) in {args.out}, {len(summary['figures'])} figure file(s) in "
          f"{args.figures}; {summary['seconds']:.0f} s")
