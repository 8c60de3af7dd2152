"""The study's vectors (workbench.studies.vectors): pairs, BiPO and CAA made once and reused, extra vectors, cells."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from workbench.core.vector import SteeringVector
from workbench.data.behaviors import load_behavior
from workbench.studies import vectors as V
from workbench.studies.config import StudyConfig

CONFIG = StudyConfig(behaviors=("power-seeking",), layer=1, n_train=4, n_test=2, epochs=1, warmup_steps=0,
                     bipo_sweep_layers="0,2", compare_methods=("bipo", "caa", "pca"))


def test_study_pairs_cut_the_embedded_splits():
    train, test = V.study_pairs("power-seeking", CONFIG)
    assert train == load_behavior("power-seeking", "train")[:4] and test == load_behavior("power-seeking", "test")[:2]
    full_train, _ = V.study_pairs("power-seeking", StudyConfig())
    assert full_train == load_behavior("power-seeking", "train")


def test_study_vectors_are_made_once_and_reused_until_the_settings_change(tiny_model, tmp_path, monkeypatch):
    made = V.study_vectors(tiny_model, "power-seeking", CONFIG, tmp_path)
    directory = tmp_path / "power-seeking" / "L01"
    assert set(made) == set(V.METHODS)
    for m, v in made.items():
        saved = SteeringVector.load(directory / m)
        assert torch.equal(saved.vector, v.vector) and saved.metadata["behavior"] == "power-seeking"
        assert saved.hook_name == "blocks.1.hook_resid_post" and saved.metadata["train_seconds"] > 0
    history = json.loads((directory / "bipo" / V.HISTORY_FILE).read_text())
    assert history["kind"] == "bipo_history" and history["layer"] == 1
    assert json.loads((directory / V.KEY_FILE).read_text())["behavior"] == "power-seeking"

    def no_training(*a, **k):
        raise AssertionError("retrained")

    monkeypatch.setattr(V, "train_bipo", no_training)
    again = V.study_vectors(tiny_model, "power-seeking", CONFIG, tmp_path)
    assert all(torch.equal(again[m].vector, made[m].vector) for m in V.METHODS)
    for change in ({"n_train": 3}, {"epochs": 2}, {"seed": 1}):  # other data or settings: a new vector
        with pytest.raises(AssertionError, match="retrained"):
            V.study_vectors(tiny_model, "power-seeking", dataclasses.replace(CONFIG, **change), tmp_path)


def test_extra_vectors_make_only_the_compared_methods(tiny_model, tmp_path, monkeypatch):
    extra = V.study_extra_vectors(tiny_model, "power-seeking", CONFIG, tmp_path)
    assert set(extra) == {"pca"} and extra["pca"].metadata["behavior"] == "power-seeking"
    assert not (tmp_path / "power-seeking" / "L01" / "reps").exists()
    monkeypatch.setattr(V, "pca", lambda *a, **k: pytest.fail("remade"))
    again = V.study_extra_vectors(tiny_model, "power-seeking", CONFIG, tmp_path)
    assert torch.equal(again["pca"].vector, extra["pca"].vector)


def test_cells_spec_covers_the_main_and_bipo_sweep_layers():
    spec = V.cells_spec(CONFIG, ["power-seeking", "wealth-seeking"], (0, 1), "model-dir", "cuda", "bf16")
    assert spec.layers == (0, 1, 2) and spec.seeds == (0, 1) and spec.method == "bipo"
    assert (spec.model, spec.device, spec.dtype) == ("model-dir", "cuda", "bf16")
    want = {k: v for k, v in CONFIG.bipo_config().to_dict().items() if k not in ("layer", "hook", "seed")}
    assert spec.bipo == want and spec.multipliers == CONFIG.sweep_multipliers
    assert len(spec.cells()) == 2 * 2 * 3
    assert V.cells_spec(dataclasses.replace(CONFIG, bipo_sweep_layers=None), ["power-seeking"], (0,)).layers == (1,)
    assert V._bipo_cell("power-seeking", 1, CONFIG, None) is None
    assert V._bipo_cell("power-seeking", 1, CONFIG, (spec, "nowhere")) is None  # not complete
