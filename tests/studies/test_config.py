"""The studies' configs (workbench.studies.config): validation, round trips, one config per stage, options."""

from __future__ import annotations

import dataclasses
import json

from pathlib import Path

import pytest

from workbench.studies.cells import SlurmOptions
from workbench.studies.config import (ExecutionConfig, LoRAFinetuneConfig, LoRATransferConfig, RefusalConfig,
                                      StudyConfig, TruthfulnessConfig)
from workbench.train.bipo import BiPOConfig
from workbench.train.reps import RePSConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = (StudyConfig, RefusalConfig, TruthfulnessConfig, LoRAFinetuneConfig, LoRATransferConfig, ExecutionConfig)


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_config_round_trips_through_json(cls):
    config = cls()
    data = json.loads(json.dumps(config.to_dict()))
    assert list(data) == [f.name for f in dataclasses.fields(cls)]
    if cls is LoRATransferConfig:
        data["bipo_config"] = BiPOConfig(**data["bipo_config"])
    if cls is ExecutionConfig:
        data["cells_model"] = tuple(data["cells_model"])
    rebuilt = cls(**{k: tuple(v) if isinstance(v, list) and k != "bipo_config" else v for k, v in data.items()})
    assert rebuilt == config


def test_study_config_reads_back_the_config_of_the_saved_study():
    """``results/full/summary.json`` was written with today's field names, in this order: its config
    builds a ``StudyConfig`` that writes the same dict again."""
    saved = json.loads((ROOT / "results" / "full" / "summary.json").read_text())["config"]
    config = StudyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    assert json.loads(json.dumps(config.to_dict())) == saved and list(config.to_dict()) == list(saved)


@pytest.mark.parametrize("change, field", [({"layer": -1}, "layer"), ({"epochs": 0}, "epochs"),
                                           ({"n_train": 0}, "n_train"), ({"n_boot": 0}, "n_boot"),
                                           ({"multipliers": ()}, "multipliers"), ({"budgets": (0.1, -1.0)}, "budgets"),
                                           ({"behaviors": ()}, "behaviors"), ({"utility_texts": -1}, "utility_texts"),
                                           ({"truthfulqa_test_fraction": 1.0}, "truthfulqa_test_fraction"),
                                           ({"lora_kl_targets": (0.0,)}, "lora_kl_targets")])
def test_study_config_rejects_bad_values_naming_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        StudyConfig(**change)
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(StudyConfig.quick(), **change)


def test_quick_and_demo_configs_are_valid_and_small():
    q = StudyConfig.quick()
    assert q.n_train <= 8 and q.epochs == 1 and q.bipo_sweep_layers is None
    assert set(q.behaviors) >= set(q.composition)
    d = StudyConfig.demo("wealth-seeking", quick=True)
    assert d.behaviors == ("wealth-seeking",) and d.ab and d.n_test == 4
    assert StudyConfig(utility_texts=0, lora_kl_targets=()).lora_kl_targets == ()  # both mean "skip"


def test_each_stage_gets_its_own_config_from_the_study():
    c = dataclasses.replace(StudyConfig.quick(), lr=0.02, seed=3, eval_batch_size=5, n_boot=40,
                            refusal_templates=("none", "persona"), utility_max_tokens=48)
    bipo = c.bipo_config()
    assert (bipo.layer, bipo.epochs, bipo.lr, bipo.seed, bipo.warmup_steps) == (14, 1, 0.02, 3, 0)
    assert c.bipo_config(layer=9).layer == 9 and StudyConfig().bipo_config().lr == BiPOConfig().lr
    reps = c.reps_config()
    assert isinstance(reps, RePSConfig) and reps.epochs == c.reps_epochs and reps.lr == 0.02
    assert c.refusal_config() == RefusalConfig(templates=(None, "persona"), max_new_tokens=c.refusal_max_new_tokens,
                                               n_boot=40, seed=3, batch_size=5, utility_max_tokens=48)
    t = c.truthfulness_config()
    assert (t.n_train, t.n_test, t.multipliers, t.batch_size) == (4, c.n_test, c.multipliers, 5)
    assert StudyConfig().truthfulness_config().n_test == 60  # n_test None: truthfulqa_n_test
    lora = c.lora_config()
    assert (lora.kl_targets, lora.max_steps, lora.bipo_config, lora.seed) == ((0.001,), 10, bipo, 3)


def test_study_configs_validate():
    with pytest.raises(ValueError, match="templates is empty"):
        RefusalConfig(templates=())
    with pytest.raises(ValueError, match="max_new_tokens"):
        RefusalConfig(max_new_tokens=0)
    assert RefusalConfig(templates=[None]).templates == (None,)
    with pytest.raises(ValueError, match="test_fraction"):
        TruthfulnessConfig(test_fraction=0.0)
    with pytest.raises(ValueError, match="n_test"):
        TruthfulnessConfig(n_test=0)


def test_execution_config():
    e = ExecutionConfig(executor="debug", seeds=[0, 1], cells_model=["dir", "cpu", "fp32"])
    assert e.seeds == (0, 1) and e.cells_model == ("dir", "cpu", "fp32") and e.slurm is None
    assert ExecutionConfig(seeds=[]).seeds is None  # no seeds: the study's seed
    assert ExecutionConfig(slurm=SlurmOptions(partition="gpu")).to_dict()["slurm"]["partition"] == "gpu"
    with pytest.raises(ValueError, match="executor='cloud': use one of inline, debug, local, slurm"):
        ExecutionConfig(executor="cloud")
    with pytest.raises(ValueError, match="cells_model"):
        ExecutionConfig(cells_model=("dir", "cpu"))
