"""Studies as cells (workbench.studies.cells): inline, submitit debug and local executors agree cell for cell; a
killed local study resumes with only its missing cells; aggregation over seeds; the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_llama_dir

from workbench.studies.cells import Cell, StudySpec, aggregate, is_complete, run_study
from workbench.cli.main import main
from workbench.core.vector import SteeringVector

BEHAVIORS = ("power-seeking", "wealth-seeking")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(write_llama_dir(tmp_path_factory.mktemp("cells") / "tiny-llama", hidden=32, layers=3, inter=64,
                               rope=False, max_pos=1024))


def spec_for(model_dir: str, **kw) -> StudySpec:
    base = dict(data=BEHAVIORS, method="bipo", layers=(0, 1, 2), seeds=(0, 1), model=model_dir, n_train=4,
                n_test=3, bipo={"epochs": 1, "batch_size": 2, "warmup_steps": 0, "max_length": None}, batch_size=4)
    return StudySpec(**(base | kw))


def _vectors(spec: StudySpec, root) -> dict[str, torch.Tensor]:
    return {c.name: SteeringVector.load(c.directory(root)).vector for c in spec.cells()}


def test_inline_debug_and_local_agree_cell_for_cell(model_dir, tmp_path):
    spec = spec_for(model_dir)
    assert len(spec.cells()) == 12  # 3 layers x 2 behaviors x 2 seeds
    runs = {ex: run_study(spec, tmp_path / ex, executor=ex) for ex in ("inline", "debug", "local")}
    for ex, summary in runs.items():
        assert len(summary["ran"]) == 12 and summary["jobs"] == 4, ex  # one job per (behavior, seed)
    ref = _vectors(spec, tmp_path / "inline")
    agg = {ex: aggregate(spec, tmp_path / ex) for ex in runs}
    for ex in ("debug", "local"):
        got = _vectors(spec, tmp_path / ex)
        for name, v in ref.items():
            torch.testing.assert_close(got[name], v, atol=1e-6, rtol=1e-6, msg=f"{ex} {name}")
        for a, b in zip(agg[ex]["seed_rows"], agg["inline"]["seed_rows"]):
            assert a.keys() == b.keys()
            for k in a:
                if k in ("effect@-1", "effect@+1", "norm", "base_logodds"):
                    assert a[k] == pytest.approx(b[k], abs=1e-4), (ex, k)
    # seeds give different BiPO vectors; the aggregate has their mean and spread
    assert not torch.equal(ref["power-seeking/bipo/L01/seed0"], ref["power-seeking/bipo/L01/seed1"])
    rows = agg["inline"]["rows"]
    assert len(rows) == 6 and all(r["n_seeds"] == 2 for r in rows)
    seed_rows = [r for r in agg["inline"]["seed_rows"] if r["data"] == "power-seeking" and r["layer"] == 1]
    mean = sum(r["effect@+1"] for r in seed_rows) / 2
    row = next(r for r in rows if r["data"] == "power-seeking" and r["layer"] == 1)
    assert row["effect@+1"] == pytest.approx(mean) and row["effect@+1_std"] > 0
    # each cell records its effect with the paired bootstrap interval around it
    info = json.loads((Cell("power-seeking", "bipo", 1, 0).directory(tmp_path / "inline") / "cell.json").read_text())
    for m, (low, high) in info["effect_intervals"].items():
        assert low <= info["effects"][m] <= high


def test_killed_local_study_resumes_only_missing_cells(model_dir, tmp_path, monkeypatch):
    spec = spec_for(model_dir, seeds=(0,))  # 2 jobs (one per behavior) of 3 cells: each job a fresh process
    monkeypatch.setenv("WORKBENCH_CELLS_KILL_AFTER", "1")  # each job SIGKILLs itself after its first cell
    with pytest.raises(RuntimeError, match="2 of 2 job"):
        run_study(spec, tmp_path, executor="local")
    done = [c for c in spec.cells() if is_complete(spec, c, tmp_path)]
    assert len(done) == 2  # one cell per killed job
    with pytest.raises(ValueError, match="4 cell"):
        aggregate(spec, tmp_path)
    monkeypatch.delenv("WORKBENCH_CELLS_KILL_AFTER")
    again = run_study(spec, tmp_path, executor="local")
    assert again["complete_before"] == 2 and len(again["ran"]) == 4
    assert sorted(again["ran"]) == sorted(c.name for c in spec.cells() if c not in done)
    assert run_study(spec, tmp_path, executor="local")["ran"] == []  # nothing left
    assert len(aggregate(spec, tmp_path)["rows"]) == 6


def test_changed_settings_rerun_the_cell_and_caa_ignores_seeds(model_dir, tmp_path):
    spec = spec_for(model_dir, method="caa", layers=(1, 2), data=BEHAVIORS[:1])
    assert [c.seed for c in spec.cells()] == [0, 0]  # CAA: the first seed only
    assert len(run_study(spec, tmp_path)["ran"]) == 2
    assert run_study(spec, tmp_path)["ran"] == []
    other = spec_for(model_dir, method="caa", layers=(1, 2), data=BEHAVIORS[:1], position="last")
    assert len(run_study(other, tmp_path)["ran"]) == 2  # another key: the cells are stale
    with pytest.raises(ValueError, match="layer"):
        StudySpec(data=("x",), bipo={"layer": 3})
    with pytest.raises(ValueError, match="executor"):
        run_study(spec, tmp_path, executor="ray")
    assert Cell("power-seeking", "caa", 1, 0).directory(tmp_path).name == "seed0"


def test_cli_sweep_with_seeds_and_executor(model_dir, tmp_path, capsys):
    out = tmp_path / "sweep.json"
    args = ["sweep", "--method", "bipo", "--behavior", "power-seeking", "--layers", "1,2", "--seeds", "0", "1",
            "--limit", "4", "--eval-limit", "3", "--epochs", "1", "--model", model_dir, "--executor", "debug",
            "--out", str(out)]
    assert main(args) == 0
    res = json.loads(out.read_text())
    assert res["kind"] == "sweep" and res["seeds"] == [0, 1] and len(res["rows"]) == 2
    assert len(res["seed_rows"]) == 4 and res["run"]["executor"] == "debug"
    assert (tmp_path / "sweep_cells" / "cells" / "power-seeking" / "bipo" / "L02" / "seed1" / "cell.json").is_file()
    assert main(args) == 0  # resubmitted: every cell complete, nothing runs
    assert "0 cell(s) run, 4 of 4 already complete" in capsys.readouterr().err


def test_reproduce_makes_its_bipo_vectors_as_cells_over_seeds(model_dir, tmp_path):
    import dataclasses

    from workbench.core.loading import load_model
    from workbench.studies.reproduce import StudyConfig, reproduce

    config = dataclasses.replace(StudyConfig.quick(), layer=1, bipo_sweep_layers="2", batch_size=2, n_train=4,
                                 n_test=3, warmup_steps=0)
    model = load_model(model_dir)
    summary = reproduce(tmp_path, config, model=model, stages=("vectors",), executor="debug", seeds=(0, 1),
                        cells_model=(model_dir, "cpu", "fp32"))
    seeds = json.loads((tmp_path / "seeds.json").read_text())
    assert seeds["seeds"] == [0, 1] and {r["layer"] for r in seeds["rows"]} == {1, 2}
    assert all(r["n_seeds"] == 2 for r in seeds["rows"]) and len(seeds["rows"]) == 4  # 2 behaviors x 2 layers
    # the stages use the seed-0 cell's vector, not a second training run
    cell = SteeringVector.load(Cell("power-seeking", "bipo", 1, 0).directory(tmp_path))
    used = SteeringVector.load(tmp_path / "vectors" / "power-seeking" / "L01" / "bipo")
    torch.testing.assert_close(used.vector, cell.vector)
    assert "cells" in summary["seconds"]
