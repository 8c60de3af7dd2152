"""``workbench conditional``: steering vectors gated by a CAST condition (Lee et al. 2024, arXiv 2409.05907)."""

from __future__ import annotations

import argparse
import sys

from workbench.cli.common import config, echo


def run_conditional(args: argparse.Namespace) -> None:
    """``workbench.studies.run_conditional.conditional_run`` on the flags; prints the condition and the table."""
    from workbench.studies.run_conditional import ConditionalRun, conditional_run, format_conditional

    result = conditional_run(config(ConditionalRun, args), log=echo("conditional"))
    print(format_conditional(result))
    print(f"wrote {args.out}", file=sys.stderr)
