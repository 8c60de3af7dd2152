"""``workbench mechanism``: which components carry each steering vector's effect (patching, attribution, DLA,
attention shift, route comparison)."""

from __future__ import annotations

import argparse
import sys

from workbench.cli.common import config, echo


def run_mechanism(args: argparse.Namespace) -> None:
    """``workbench.studies.run_mechanism.mechanism_run`` on the flags; prints a summary line per result."""
    from workbench.studies.run_mechanism import MechanismRun, format_mechanism, mechanism_run

    results = mechanism_run(config(MechanismRun, args), log=echo("mechanism"))
    print(format_mechanism(results))
    print(f"wrote {len(results)} result(s) to {args.out}", file=sys.stderr)
