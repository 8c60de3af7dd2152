"""``workbench train``: a vector trained (BiPO, RePS) or extracted (CAA, ActAdd, PCA) and saved."""

from __future__ import annotations

import argparse

from workbench.cli.common import config, echo


def run_train(args: argparse.Namespace) -> None:
    """``workbench.studies.run_train.train_run`` on the flags; status lines on stderr."""
    from workbench.studies.run_train import TrainRun, train_run

    train_run(config(TrainRun, args), log=echo("train"))
