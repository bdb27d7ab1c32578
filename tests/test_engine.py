"""The shared classification engine: exact resume, NaN stop, early stopping, finished phases, weight average."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from experiment.checkpoint import epoch_checkpoint_path, load_checkpoint
from experiment.config import check_train
from experiment.device import autocast
from experiment.engine import FitSettings, NonFiniteLossError, ema_update, evaluate, fit
from experiment.errors import ConfigError
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


def _run(path: Path, epochs: int, patience: int = 0, lr: float = 0.1, cpu_bf16: bool = False,
         ema_decay: float = 0.0, norm: bool = False):
    seed_everything(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16) if norm else nn.Identity(), nn.ReLU(),
                          nn.Dropout(0.2), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=6)
    run = RunDir(path)
    train, val = _loaders()
    result = fit(model, CrossEntropyObjective(), optimizer, scheduler, train, val,
                 FitSettings(phase="train", epochs=epochs, patience=patience, cpu_bf16=cpu_bf16, ema_decay=ema_decay),
                 run, Monitor(run),
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


def test_ema_update_warms_up_then_decays() -> None:
    average, update = [torch.zeros(2), torch.zeros(1, dtype=torch.long)], ema_update(0.9)
    update(average, [torch.ones(2), torch.full((1,), 7)], torch.tensor(1))
    assert torch.allclose(average[0], torch.full((2,), 1 - 2 / 11)) and average[1].item() == 7  # warm-up decay
    update(average, [torch.ones(2), torch.full((1,), 8)], torch.tensor(1000))
    assert torch.allclose(average[0], torch.full((2,), 1 - 0.9 * 2 / 11)) and average[1].item() == 8
    with pytest.raises(ValueError, match="ema decay"):
        ema_update(1.0)
    with pytest.raises(ConfigError, match="train.ema_decay must be in"):
        check_train({"epochs": 1, "batch_size": 1, "lr": 0.1, "ema_decay": 1.0})


def test_ema_validates_and_saves_the_average_without_changing_training(tmp_path: Path) -> None:
    raw, raw_result, raw_run = _run(tmp_path / "raw", epochs=4, norm=True)
    averaged_model, result, run = _run(tmp_path / "ema", epochs=4, ema_decay=0.9, norm=True)
    for a, b in zip(raw.state_dict().values(), averaged_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the average never feeds back into training
    train_losses = [[r["values"]["train_loss"] for r in each.read_metrics() if r["kind"] == "scalars"]
                    for each in (raw_run, run)]
    assert train_losses[0] == train_losses[1]
    best = load_checkpoint(run.checkpoints / "train" / "best.pt")
    last = load_checkpoint(epoch_checkpoint_path(run.checkpoints / "train", 4))
    saved = dict(best["model"])
    assert set(saved) == set(raw.state_dict())
    assert any(not torch.equal(saved[k], v) for k, v in raw.state_dict().items() if v.is_floating_point())
    assert "average" in last and all(torch.equal(last["model"][k], v) for k, v in raw.state_dict().items())
    scored = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    scored.load_state_dict(saved)
    metrics, _, _ = evaluate(scored, CrossEntropyObjective(), _loaders()[1], torch.device("cpu"), CLASSES)
    assert metrics["macro_f1"] == pytest.approx(result.best_val["macro_f1"])  # what was validated is saved


def test_ema_resume_equals_uninterrupted(tmp_path: Path) -> None:
    _, full_result, full_run = _run(tmp_path / "full", epochs=6, ema_decay=0.8, norm=True)
    _run(tmp_path / "split", epochs=3, ema_decay=0.8, norm=True)
    _, resumed_result, resumed_run = _run(tmp_path / "split", epochs=6, ema_decay=0.8, norm=True)
    assert resumed_result.best_epoch == full_result.best_epoch
    full_best = load_checkpoint(full_run.checkpoints / "train" / "best.pt")["model"]
    resumed_best = load_checkpoint(resumed_run.checkpoints / "train" / "best.pt")["model"]
    assert all(torch.equal(full_best[k], resumed_best[k]) for k in full_best)
    strip = [{k: v for k, v in r.items() if k != "time"} for r in full_run.read_metrics()]
    assert strip == [{k: v for k, v in r.items() if k != "time"} for r in resumed_run.read_metrics()]
