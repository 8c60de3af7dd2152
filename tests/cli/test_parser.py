"""The parser (``workbench.cli.parser``): every command bound to its run function, shared flags defined once,
library defaults left to the library, and every flag reaching its run config."""

import argparse
import dataclasses
import inspect

import pytest

from workbench.cli import conditional, entanglement, evaluate, files, mechanism, prompting, study, train
from workbench.cli.parser import build_parser
from workbench.studies.run_conditional import ConditionalRun
from workbench.studies.run_entanglement import EntanglementRun
from workbench.studies.run_evaluate import CompareRun, EvalRun, RefusalRun
from workbench.studies.run_mechanism import MechanismRun
from workbench.studies.run_prompting import PromptingRun
from workbench.studies.run_files import ConvertRun, figures_run, report_run
from workbench.studies.run_studies import DemoRun, ReproduceRun, SweepRun
from workbench.studies.run_train import TrainRun
from workbench.studies.runs import ModelOptions

COMMANDS = {"info": (files.run_info, ModelOptions), "train": (train.run_train, TrainRun),
            "eval": (evaluate.run_eval, EvalRun), "sweep": (study.run_sweep, SweepRun),
            "figures": (files.run_figures, figures_run), "convert": (files.run_convert, ConvertRun),
            "demo": (study.run_demo, DemoRun), "reproduce": (study.run_reproduce, ReproduceRun),
            "report": (files.run_report, report_run), "refusal": (evaluate.run_refusal, RefusalRun),
            "compare": (evaluate.run_compare, CompareRun), "prompting": (prompting.run_prompting, PromptingRun),
            "conditional": (conditional.run_conditional, ConditionalRun),
            "entanglement": (entanglement.run_entanglement, EntanglementRun),
            "mechanism": (mechanism.run_mechanism, MechanismRun)}
MODEL_FLAGS = {"--model", "--device", "--dtype", "--n-devices"}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    return build_parser()._subparsers._group_actions[0].choices


def _flags(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in p._actions if a.dest != "help"}


def test_every_command_is_bound_to_its_run_function():
    subs = _subparsers()
    assert list(subs) == list(COMMANDS)  # the order `workbench --help` lists them
    for name, (run, _) in COMMANDS.items():
        assert subs[name].get_default("func") is run, name


def test_every_flag_reaches_the_run_config():
    """No flag is parsed and then dropped: each one is a field (or parameter) of its command's run config."""
    for name, (_, target) in COMMANDS.items():
        fields = ({f.name for f in dataclasses.fields(target)} if dataclasses.is_dataclass(target)
                  else set(inspect.signature(target).parameters))
        missing = set(_flags(_subparsers()[name])) - fields
        assert not missing, (name, missing)


def test_the_model_flags_are_one_definition():
    subs = _subparsers()
    loaders = [n for n in subs if MODEL_FLAGS <= {o for a in subs[n]._actions for o in a.option_strings}]
    assert set(loaders) == set(COMMANDS) - {"figures", "report", "convert"}

    def shape(name):
        return sorted((a.dest, a.default, a.choices, a.type) for a in subs[name]._actions
                      if set(a.option_strings) & MODEL_FLAGS)

    assert all(shape(n) == shape("info") for n in loaders)
    assert dict((d, v) for d, v, *_ in shape("info")) == {"model": None, "device": "cpu", "dtype": "fp32",
                                                          "n_devices": 1}


@pytest.mark.parametrize("name", ["eval", "demo", "refusal", "sweep"])
def test_library_defaults_are_not_written_in_the_parser(name):
    """--multipliers (and eval's --metrics) default to None: the run configs hold the defaults."""
    flags = _flags(_subparsers()[name])
    assert flags["multipliers"].default is None
    if name == "eval":
        assert flags["metrics"].default is None


def test_old_flag_names_still_parse():
    parser = build_parser()
    args = parser.parse_args(["train", "--seed", "3", "--out", "o"])
    assert args.seed == 3 and args.func is train.run_train
    assert parser.parse_args(["eval", "--vector", "v", "--seed", "5", "--out", "o"]).seed == 5
    assert parser.parse_args(["sweep", "--behavior", "b", "--seed", "2", "--out", "o"]).split_seed == 2
    assert parser.parse_args(["compare", "--vector", "v", "--behavior", "b", "--seed", "4", "--out", "o"]).seed == 4


def test_descriptions_are_the_flag_functions_docstrings():
    subs = _subparsers()
    assert subs["train"].description.startswith("Train a BiPO or RePS vector")
    assert "kind 'matched_cost'" in subs["compare"].description
    assert subs["info"].description is None


def test_help_texts_agree_with_the_library():
    """The few library facts a help text spells out are the library's own."""
    from workbench.evaluate.statistics import DEFAULT_MULTIPLIERS
    from workbench.evaluate.suite import METRICS

    subs = _subparsers()
    assert f"from {','.join(METRICS)} " in _flags(subs["eval"])["metrics"].help
    default = " ".join(f"{m:g}" for m in DEFAULT_MULTIPLIERS)
    assert all(_flags(subs[n])["multipliers"].help == f"default: {default}" for n in ("eval", "demo", "refusal"))
    assert tuple(SweepRun(out="s.json").multipliers) == (-1.0, 1.0)
    assert _flags(subs["sweep"])["multipliers"].help == "default: -1 1"
