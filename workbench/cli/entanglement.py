"""``workbench entanglement``: each behavior's vector on every other behavior's held-out pairs (side effects)."""

from __future__ import annotations

import argparse
import sys

from workbench.cli.common import config, echo


def run_entanglement(args: argparse.Namespace) -> None:
    """``workbench.studies.run_entanglement.entanglement_run`` on the flags; prints the normalised matrix."""
    from workbench.studies.run_entanglement import EntanglementRun, entanglement_run, format_entanglement

    result = entanglement_run(config(EntanglementRun, args), log=echo("entanglement"))
    print(format_entanglement(result))
    print(f"wrote {args.out}", file=sys.stderr)
