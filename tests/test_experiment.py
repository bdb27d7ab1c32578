"""Experiment machinery: atomic writes, safe checkpoints, run directories, metrics, seeding."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from experiment.atomic import atomic_open, atomic_write_json
from experiment.checkpoint import (
    CheckpointError,
    epoch_checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    load_model_state,
    prune_checkpoints,
    save_checkpoint,
)
from experiment.metrics import aggregate_folds, classification_metrics
from experiment.rundir import RunDir
from experiment.seeding import derive_seed, seed_everything


def test_atomic_write_leaves_old_file_on_error(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    atomic_write_json(path, {"v": 1})
    with pytest.raises(RuntimeError), atomic_open(path, "w") as handle:
        handle.write("{broken")
        raise RuntimeError("killed mid-write")
    assert path.read_text().strip().startswith("{") and '"v": 1' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_checkpoint_round_trip_and_latest(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    for epoch in (1, 2, 3):
        save_checkpoint(epoch_checkpoint_path(tmp_path, epoch), {"model": model.state_dict(), "epoch": epoch})
    assert latest_checkpoint(tmp_path).name == "epoch-0003.pt"
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002.pt", "epoch-0003.pt"]
    state = load_checkpoint(latest_checkpoint(tmp_path))
    other = torch.nn.Linear(3, 2)
    load_model_state(other, state["model"], "x")
    assert torch.equal(other.weight, model.weight)


def test_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_checkpoint(corrupt)
    with pytest.raises(CheckpointError, match="does not match"):
        load_model_state(torch.nn.Linear(4, 2), torch.nn.Linear(3, 2).state_dict(), "ckpt.pt")


def test_checkpoint_refuses_arbitrary_objects(tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_rundir_repairs_truncated_metrics_and_rewinds(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    for epoch in (1, 2, 3):
        run.log({"phase": "train", "epoch": epoch})
    with open(run.metrics_path, "a") as handle:
        handle.write('{"phase": "train", "ep')  # a kill mid-append
    run = RunDir(tmp_path)
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]
    run.rewind_metrics(lambda r: r["epoch"] <= 2)
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]


def test_rundir_config_and_summary(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.write_config({"model": {"name": "capsnet"}, "lr": 0.001})
    run.write_summary({"accuracy": 0.5})
    assert "capsnet" in (tmp_path / "config.yaml").read_text()
    summary = run.read_summary()
    assert summary["accuracy"] == 0.5 and "git_commit" in summary and summary["wall_time_s"] >= 0


def test_classification_metrics_by_hand() -> None:
    metrics = classification_metrics([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # per class: a P=1/2 R=1/2 F1=1/2; b P=2/3 R=1 F1=0.8; c P=1 R=1/2 F1=2/3
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    with pytest.raises(ValueError, match="empty"):
        classification_metrics([], [], ["a"])


def test_aggregate_folds() -> None:
    folds = [classification_metrics([0, 1, 2], [0, 1, 2], "abc"), classification_metrics([0, 1, 2], [0, 1, 1], "abc")]
    agg = aggregate_folds(folds)
    assert agg["accuracy"]["mean"] == pytest.approx((1 + 2 / 3) / 2)
    assert agg["accuracy"]["std"] == pytest.approx(np.std([1, 2 / 3], ddof=1))
    assert agg["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 1, 1]]


def test_seeding_is_deterministic_and_keyed() -> None:
    assert derive_seed(1, 2) == derive_seed(1, 2) != derive_seed(1, 3)
    seed_everything(7, 1)
    a = torch.rand(3), np.random.rand(3)
    seed_everything(7, 1)
    b = torch.rand(3), np.random.rand(3)
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_rundir_claim_refuses_another_experiment(tmp_path: Path) -> None:
    from experiment.rundir import RunDirConflict

    RunDir(tmp_path).claim({"data": "abc", "fold": 0})
    RunDir(tmp_path).claim({"data": "abc", "fold": 0})  # same experiment: resume is fine
    with pytest.raises(RunDirConflict, match=r"differs in \['data'\]"):
        RunDir(tmp_path).claim({"data": "xyz", "fold": 0})
