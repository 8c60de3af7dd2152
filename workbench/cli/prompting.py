"""``workbench prompting``: the prompting baseline (an instruction, k shots) beside the vectors of a comparison."""

from __future__ import annotations

import argparse
import sys

from workbench.cli.common import CLIError, config, echo, numbers


def run_prompting(args: argparse.Namespace) -> None:
    """``workbench.studies.run_prompting.prompting_run`` on the flags; prints the prompting table."""
    from workbench.studies.run_prompting import PromptingRun, format_prompting, prompting_run

    ks = numbers("--ks", args.ks)
    if ks is not None and any(k != int(k) for k in ks):
        raise CLIError(f"--ks: whole numbers only, got {args.ks}")
    result = prompting_run(config(PromptingRun, args, budgets=numbers("--budgets", args.budgets),
                                  ks=None if ks is None else tuple(int(k) for k in ks)), log=echo("prompting"))
    print(format_prompting(result))
    print(f"wrote {args.out}", file=sys.stderr)
