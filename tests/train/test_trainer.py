"""The preference trainer: the schedule, the batches, the options of a config, any objective, and
checkpoints with resume (a resumed run equals an uninterrupted one)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from test_bipo import PAIRS, Interrupt, stop_after_first, tiny_config
from workbench.core.vector import SteeringVector
from workbench.train.bipo import BIPO, train_bipo
from workbench.train.reps import RePSConfig
from workbench.train.trainer import (Objective, TrainConfig, TrainResult, batch_plan, checkpoint_vectors, lr_factor,
                                     train_preference_vector)


def test_lr_factor_warmup_then_cosine():
    assert lr_factor(0, 100, 10) == 0.0
    assert lr_factor(5, 100, 10) == pytest.approx(0.5)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, 10, 0) == pytest.approx(1.0)


def test_batch_plan_covers_every_pair_once():
    cfg = TrainConfig(batch_size=3)
    plan = batch_plan(10, cfg, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(plan).tolist()) == list(range(10)) and [len(b) for b in plan] == [3, 3, 3, 1]
    lengths = torch.arange(10, 0, -1)
    bucket = batch_plan(10, dataclasses.replace(cfg, batching="bucket"), torch.Generator().manual_seed(0), lengths)
    assert sorted(torch.cat(bucket).tolist()) == list(range(10))
    assert all((lengths[b].diff() <= 0).all() or (lengths[b].diff() >= 0).all() for b in bucket)  # sorted inside


def test_config_options_belong_to_the_objective():
    with pytest.raises(ValueError, match=r"TrainConfig.batching='x'; valid: random, bucket"):
        TrainConfig(batching="x")
    assert "direction" not in TrainConfig._options and "direction" not in RePSConfig._options
    assert not hasattr(TrainConfig(), "direction")


def test_any_objective_through_the_trainer(tiny_model):
    """BiPO's objective given explicitly is train_bipo, bit for bit; another objective trains its own way."""
    cfg = tiny_config(epochs=1)
    direct = train_preference_vector(tiny_model, PAIRS, cfg, BIPO, progress=False)
    assert isinstance(direct, TrainResult)
    assert torch.equal(direct.vector.vector, train_bipo(tiny_model, PAIRS, cfg, progress=False).vector.vector)

    def batch(score, ref, lengths, v, gen, config):  # raise the matching answer's log-prob only
        lp = score(v)  # (b, 2)
        return -(lp[:, 0] - ref[:, 0]), {"margin": lp[:, 0] - ref[:, 0]}

    def signed(lp, ref, lengths, sign, config):
        return -(lp[:, 0] - ref[:, 0]), lp[:, 0] - ref[:, 0]

    mine = train_preference_vector(tiny_model, PAIRS, cfg, Objective("likelihood", "Likelihood", batch, signed),
                                   progress=False, eval_pairs=PAIRS[:2])
    assert mine.vector.method == "likelihood" and mine.vector.norm > 0
    assert not torch.equal(mine.vector.vector, direct.vector.vector) and "eval_loss" in mine.epochs[-1]


def test_resume_equals_uninterrupted_run(tiny_model, tmp_path):
    cfg = tiny_config(epochs=2, init="random", batching="bucket")
    straight = train_bipo(tiny_model, PAIRS, cfg, progress=False)

    with pytest.raises(Interrupt):
        train_bipo(tiny_model, PAIRS, cfg, checkpoint_dir=tmp_path, progress=False, callback=stop_after_first)
    saved = json.loads((tmp_path / "checkpoint.json").read_text())
    assert saved["epoch"] == 1 and saved["step"] == 3 and len(saved["history"]) == 3
    resumed = train_bipo(tiny_model, PAIRS, cfg, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert torch.equal(resumed.vector.vector, straight.vector.vector)
    assert resumed.history == straight.history
    assert [e["loss"] for e in resumed.epochs] == [e["loss"] for e in straight.epochs]
    # artifacts: safetensors + JSON only, never a pickle
    files = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert files == {"checkpoint.safetensors", "checkpoint.json", "vector.safetensors", "vector.json"}
    assert SteeringVector.load(tmp_path / "vectors" / "epoch_002").cosine(straight.vector) == pytest.approx(1.0)
    by_epoch = checkpoint_vectors(tmp_path)  # each epoch's vector, in order, for routes over training
    assert list(by_epoch) == ["epoch 1", "epoch 2"]
    assert torch.equal(by_epoch["epoch 2"].vector, straight.vector.vector)
    assert not torch.equal(by_epoch["epoch 1"].vector, by_epoch["epoch 2"].vector)
    with pytest.raises(FileNotFoundError, match="no epoch vectors"):
        checkpoint_vectors(tmp_path / "vectors")


def test_checkpoint_guards(tiny_model, tmp_path):
    cfg = tiny_config(epochs=1)
    train_bipo(tiny_model, PAIRS, cfg, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="resume=True"):
        train_bipo(tiny_model, PAIRS, cfg, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="another config.*differs in lr: saved"):
        train_bipo(tiny_model, PAIRS, tiny_config(epochs=1, lr=0.5), checkpoint_dir=tmp_path, resume=True,
                   progress=False)
    with pytest.raises(ValueError, match="data_fingerprint differs"):
        train_bipo(tiny_model, PAIRS[:3], cfg, checkpoint_dir=tmp_path, resume=True, progress=False)
    (tmp_path / "checkpoint.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="does not match"):
        train_bipo(tiny_model, PAIRS, cfg, checkpoint_dir=tmp_path, resume=True, progress=False)


@pytest.mark.tl3  # the residual norm comes from the prefix cache, which the bridge (TL 4) does not keep
def test_a_vector_beyond_the_residual_norm_is_flagged_with_its_loss(tiny_model, tmp_path, caplog):
    """Issue #30: `--lr 1e9` trained a vector of norm 1.8e9 at loss ln 2 without a word."""
    from workbench.train.trainer import NORM_FLAG_RATIO

    normal = train_bipo(tiny_model, PAIRS, tiny_config(epochs=1), progress=False)
    assert normal.resid_norm > 0 and normal.norm_flag is None and "norm_flag" not in normal.vector.metadata
    assert normal.vector.metadata["resid_norm"] == normal.resid_norm
    assert normal.to_dict()["resid_norm"] == normal.resid_norm and "norm_flag" not in normal.to_dict()

    with caplog.at_level("WARNING", logger="workbench.train.trainer"):
        huge = train_bipo(tiny_model, PAIRS, tiny_config(epochs=1, lr=1e9), checkpoint_dir=tmp_path, progress=False)
    flag = huge.norm_flag
    assert huge.vector.norm > NORM_FLAG_RATIO * huge.resid_norm
    assert flag["ratio"] == pytest.approx(huge.vector.norm / huge.resid_norm, rel=1e-5)
    assert flag["loss"] == huge.epochs[-1]["loss"] and flag["lr"] == 1e9 and flag["bound"] == NORM_FLAG_RATIO
    assert huge.resid_norm == pytest.approx(normal.resid_norm)  # the same data: the same residuals
    assert huge.to_dict()["norm_flag"] == flag and huge.vector.metadata["norm_flag"] == flag
    saved = SteeringVector.load(tmp_path / "vectors" / "epoch_001")
    assert saved.metadata["norm_flag"]["ratio"] == pytest.approx(flag["ratio"])
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "mean residual norm" in warning and f"final loss {flag['loss']:.4g}" in warning and "lr 1e+09" in warning


_HOLD = """
import sys
from workbench.core.artifacts import artifact_lock
with artifact_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_a_second_run_into_a_checkpoint_dir_is_refused_naming_the_first(tiny_model, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from workbench.core.artifacts import ArtifactBusyError

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path / "ckpt")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"locked"
        with pytest.raises(ArtifactBusyError, match=f"pid {proc.pid}"):
            train_bipo(tiny_model, PAIRS, tiny_config(epochs=1), checkpoint_dir=tmp_path / "ckpt", progress=False)
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert not (tmp_path / "ckpt" / "checkpoint.json").exists()
    train_bipo(tiny_model, PAIRS, tiny_config(epochs=1), checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert (tmp_path / "ckpt" / "checkpoint.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # the lock file is gone
