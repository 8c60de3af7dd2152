"""``workbench info``, ``convert``, ``figures`` and ``report``: models, vector files and saved results."""

from __future__ import annotations

import argparse

from workbench.cli.common import config, echo, headless


def run_info(args: argparse.Namespace) -> None:
    """``workbench.studies.run_files.info_run`` on the model flags; prints its lines."""
    from workbench.studies.run_files import info_run
    from workbench.studies.runs import ModelOptions

    print("\n".join(info_run(config(ModelOptions, args))))


def run_convert(args: argparse.Namespace) -> None:
    """``workbench.studies.run_files.convert_run`` on the flags; prints what it wrote."""
    from workbench.studies.run_files import ConvertRun, convert_run

    vectors, written = convert_run(config(ConvertRun, args))
    for path in written:
        print(f"wrote {path}")
    for v in vectors:
        print(f"  {v.hook_name}  d_model {v.d_model}  norm {v.norm:.4g}  method {v.method}  model {v.model_name}")


def run_figures(args: argparse.Namespace) -> int:
    """``workbench.studies.run_files.figures_run`` on the flags; exit 3 (``SKIPPED_EXIT``) when a result was skipped."""
    headless()
    from workbench.studies.run_files import SKIPPED_EXIT, figures_run
    written, skipped = figures_run(args.results, args.out, args.formats, log=echo("figures"))
    print(f"wrote {len({p.with_suffix('') for p in written})} figure(s), {len(written)} file(s) to {args.out}")
    return SKIPPED_EXIT if skipped else 0


def run_report(args: argparse.Namespace) -> int:
    """``workbench.studies.run_files.report_run`` on the flags; exit 3 (``SKIPPED_EXIT``) when a result was skipped."""
    from workbench.studies.run_files import SKIPPED_EXIT, report_run
    text, skipped = report_run(args.results, args.out, args.kind, log=echo("report"))
    print(text, end="")
    return SKIPPED_EXIT if skipped else 0
