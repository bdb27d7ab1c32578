"""The shared classification engine: exact resume, NaN stop, early stopping, finished phases."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from experiment.device import autocast
from experiment.engine import FitSettings, NonFiniteLossError, evaluate, fit
from experiment.monitor import Monitor
from experiment.objectives import CrossEntropyObjective
from experiment.rundir import RunDir
from experiment.seeding import seed_everything, torch_generator

CLASSES = ("a", "b", "c")

def _data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=generator)
    y = (x[:, 0] > 0.3).long() + (x[:, 1] > 0.5).long()
    return x, y


def _loaders(seed: int = 0):
    x, y = _data()

    def train(epoch: int):
        order = torch.randperm(48, generator=torch_generator(seed, epoch))
        return [(x[order[i:i + 8]], y[order[i:i + 8]]) for i in range(0, 48, 8)]

    return train, [(x[48:], y[48:])]


def _run(path: Path, epochs: int, patience: int = 0, lr: float = 0.1, cpu_bf16: bool = False):
    seed_everything(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=6)
    run = RunDir(path)
    train, val = _loaders()
    result = fit(model, CrossEntropyObjective(), optimizer, scheduler, train, val,
                 FitSettings(phase="train", epochs=epochs, patience=patience, cpu_bf16=cpu_bf16), run, Monitor(run),
                 torch.device("cpu"), CLASSES)
    return model, result, run


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full, full_result, full_run = _run(tmp_path / "full", epochs=6)
    _run(tmp_path / "split", epochs=3)  # "killed" after epoch 3
    resumed, resumed_result, resumed_run = _run(tmp_path / "split", epochs=6)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert resumed_result.best_epoch == full_result.best_epoch
    strip = [{k: v for k, v in r.items() if k != "time"} for r in full_run.read_metrics()]
    assert strip == [{k: v for k, v in r.items() if k != "time"} for r in resumed_run.read_metrics()]


def test_finished_phase_is_not_rerun(tmp_path: Path) -> None:
    _, first, run = _run(tmp_path, epochs=2)
    lines = len(run.read_metrics())
    _, again, run = _run(tmp_path, epochs=2)
    assert again.best_epoch == first.best_epoch and len(run.read_metrics()) == lines


def test_early_stopping_on_val_macro_f1(tmp_path: Path) -> None:
    _, result, _ = _run(tmp_path, epochs=30, patience=2, lr=0.0)  # lr 0: never improves after epoch 1
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    model, _, run = _run(tmp_path, epochs=1)
    good = sorted((run.checkpoints / "train").iterdir())
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train, val = _loaders()
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        fit(model, CrossEntropyObjective(), optimizer, None, train, val, FitSettings(phase="other", epochs=1),
            run, Monitor(run), torch.device("cpu"), CLASSES)
    assert sorted((run.checkpoints / "train").iterdir()) == good
    assert not (run.checkpoints / "other").exists() or not any((run.checkpoints / "other").iterdir())


def test_evaluate_reports_metrics(tmp_path: Path) -> None:
    model, _, _ = _run(tmp_path, epochs=4)
    metrics, y_true, y_score = evaluate(model, CrossEntropyObjective(), _loaders()[1], torch.device("cpu"), CLASSES)
    assert y_true.shape == (12,) and y_score.shape == (12, 3)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0
    assert metrics["accuracy"] == pytest.approx(float((y_score.argmax(1) == y_true).mean()))


def test_cpu_bf16_autocast_is_opt_in_and_trains(tmp_path: Path) -> None:
    cpu, layer, x = torch.device("cpu"), nn.Linear(4, 3), torch.randn(2, 4)
    with autocast(cpu):
        assert layer(x).dtype == torch.float32  # CPU default: plain float32
    with autocast(cpu, cpu_bf16=True):
        assert layer(x).dtype == torch.bfloat16
    fp32, _, _ = _run(tmp_path / "fp32", epochs=3)
    bf16, result, run = _run(tmp_path / "bf16", epochs=3, cpu_bf16=True)
    weights = list(bf16.state_dict().values())
    assert all(w.dtype == torch.float32 for w in weights)  # master weights stay float32
    assert any(not torch.equal(a, b) for a, b in zip(fp32.state_dict().values(), weights, strict=True))
    epochs = {r["epoch"] for r in run.read_metrics() if r["kind"] == "scalars"}
    assert result.best_val["accuracy"] > 0.5 and epochs == {1, 2, 3}
