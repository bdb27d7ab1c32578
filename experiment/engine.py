"""Supervised classification engine shared by the 2D classifiers and the 3D branch.

:func:`fit` trains one *phase* (e.g. ``pretrain`` on synthetic shards, ``finetune`` on real slices)
with per-epoch checkpoints, exact resume, validation-based model selection, early stopping on
validation macro-F1, an optional exponential moving average of the weights (validated, selected and saved
in place of the raw weights), AMP on CUDA and DDP awareness. :func:`evaluate` is the single evaluation path
for validation and test. Models and losses arrive through the small :class:`Objective` protocol,
so this module imports no model package.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from experiment.checkpoint import (
    epoch_checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from experiment.device import autocast, grad_scaler
from experiment.distributed import is_main_process
from experiment.errors import UserError
from experiment.metrics import classification_metrics
from experiment.monitor import Monitor
from experiment.progress import progress
from experiment.rundir import RunDir
from experiment.seeding import seed_everything

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, ...]
"""``(images, labels)``, or ``(images, labels, masks)`` for objectives that supervise where a model looks."""


class NonFiniteLossError(UserError, RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept (the message says how to go on)."""


def check_finite(losses: dict[str, float], where: str, checkpoints: Path) -> None:
    """Raise :class:`NonFiniteLossError` naming the non-finite losses and the last good checkpoint kept
    in ``checkpoints`` (shared by every training loop, so a diverged run always stops the same way)."""
    bad = {name: value for name, value in losses.items() if not math.isfinite(value)}
    if bad:
        kept = latest_checkpoint(checkpoints)
        raise NonFiniteLossError(f"{where}: non-finite loss {bad}; training stopped. Last good checkpoint: "
                                 f"{kept or 'none yet'}. Lower the learning rate or check the inputs, then resume.")


class Objective(Protocol):
    """How a model's output becomes a loss, class scores and class probabilities (one per model family;
    e.g. :class:`experiment.objectives.CrossEntropyObjective`)."""

    def loss(self, output: Any, images: torch.Tensor, targets: torch.Tensor,
             masks: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar training loss and its named parts (for logging); ``masks`` (N, 1, H, W) are the batch's
        region masks where the batches carry them (objectives that do not use them ignore them)."""
        ...

    def scores(self, output: Any) -> torch.Tensor:
        """Class scores (N, C); argmax is the prediction."""
        ...

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, C) from :meth:`scores` (rows sum to one; same argmax)."""
        ...


@dataclass
class FitSettings:
    """One training phase. ``patience``: epochs without a better validation macro-F1 before stopping
    (0 disables early stopping); ``amp``: float16 autocast on CUDA; ``cpu_bf16``: bfloat16 autocast on the CPU;
    ``ema_decay``: per-step decay of the weight average that is validated and saved (0 = the raw weights)."""

    phase: str
    epochs: int
    seed: int = 0
    patience: int = 0
    amp: bool = True
    cpu_bf16: bool = False
    grad_clip: float = 0.0
    keep_checkpoints: int = 2
    ema_decay: float = 0.0


@dataclass
class FitResult:
    """Where a phase ended and which epoch was selected."""

    best_epoch: int
    best_val: dict[str, Any]
    epochs_run: int
    stopped_early: bool
    best_path: Path


def ema_update(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """The ``multi_avg_fn`` of an :class:`~torch.optim.swa_utils.AveragedModel` keeping an exponential moving
    average with decay ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (a warm-up, as in timm's ModelEma),
    so the random initialisation is forgotten within the first few hundred steps."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema decay must be in (0, 1), got {decay}")

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        steps = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + steps) / (10.0 + steps))
        for average, value in zip(averaged, current, strict=True):
            if average.is_floating_point():
                average.lerp_(value, weight)
            else:
                average.copy_(value)

    return update


def evaluate(model: nn.Module, objective: Objective, loader: Iterable[Batch], device: torch.device,
             class_names: Sequence[str], amp: bool = True,
             cpu_bf16: bool = False) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Loss and classification metrics over ``loader``; also returns (targets, scores)."""
    model.eval()
    total, count, targets, scores = 0.0, 0, [], []
    with torch.no_grad():
        for images, labels, *_ in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast(device, amp, cpu_bf16):
                output = model(images)
                loss, _ = objective.loss(output, images, labels)
            total += float(loss) * labels.shape[0]
            count += labels.shape[0]
            targets.append(labels.cpu())
            scores.append(objective.scores(output).float().cpu())
    y_true = torch.cat(targets).numpy()
    y_score = torch.cat(scores).numpy()
    metrics = classification_metrics(y_true, y_score.argmax(1), class_names)
    metrics["loss"] = total / max(count, 1)
    return metrics, y_true, y_score


def fit(model: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None, train_loader: Callable[[int], Iterable[Batch]],
        val_loader: Iterable[Batch] | None, settings: FitSettings, run_dir: RunDir, monitor: Monitor,
        device: torch.device, class_names: Sequence[str]) -> FitResult:
    """Train one phase, resuming from its newest checkpoint; return the selected (best) epoch.

    ``train_loader(epoch)`` returns that epoch's batches, seeded from ``(seed, epoch)`` so a resumed run draws
    what an uninterrupted one would (:class:`experiment.batches.TrainBatches`).
    Without ``val_loader`` the last epoch is selected. A phase that already reached ``settings.epochs``
    (or stopped early) is not rerun; raising ``settings.epochs`` continues it.
    """
    folder = run_dir.checkpoints / settings.phase
    best_path = folder / "best.pt"
    scaler = grad_scaler(device, settings.amp)
    unwrapped = getattr(model, "module", model)
    average = AveragedModel(unwrapped, multi_avg_fn=ema_update(settings.ema_decay), use_buffers=True) \
        if settings.ema_decay > 0 else None
    state = _resume(folder, model, optimizer, scheduler, scaler, run_dir, settings.phase, average)
    if state["stopped_early"] or state["epoch"] >= settings.epochs:
        return _result(state, best_path)
    selected = unwrapped if average is None else average.module
    for epoch in range(state["epoch"] + 1, settings.epochs + 1):
        seed_everything(settings.seed, _phase_key(settings.phase), epoch)
        train_stats, step = _train_epoch(model, objective, optimizer, scaler, train_loader(epoch), device,
                                         settings, epoch, state["step"], folder, average)
        state["step"] = step
        if scheduler is not None:
            scheduler.step()
        values = {**{f"train_{k}": v for k, v in train_stats.items()}, "lr": optimizer.param_groups[0]["lr"]}
        if val_loader is not None:
            val, _, _ = evaluate(model if average is None else selected, objective, val_loader, device,
                                 class_names, settings.amp, settings.cpu_bf16)
            values.update(val_loss=val["loss"], val_accuracy=val["accuracy"], val_macro_f1=val["macro_f1"])
        else:
            val = {"macro_f1": float(epoch), "accuracy": float("nan"), "loss": float("nan")}
        improved = val["macro_f1"] > state["best_score"]
        if improved:
            state.update(best_score=val["macro_f1"], best_epoch=epoch, best_val=_plain_metrics(val), stale=0)
        else:
            state["stale"] += 1
        state["epoch"] = epoch
        stop = settings.patience > 0 and state["stale"] >= settings.patience
        state["stopped_early"] = stop
        if is_main_process():
            monitor.scalars(settings.phase, epoch, step, values)
            if val_loader is not None:
                monitor.confusion(settings.phase, epoch, step, "val_confusion", val["confusion_matrix"], class_names)
            if improved:
                save_checkpoint(best_path, {"model": selected.state_dict(), "epoch": epoch,
                                            "val": state["best_val"]})
            save_checkpoint(epoch_checkpoint_path(folder, epoch), {
                "model": unwrapped.state_dict(), "optimizer": optimizer.state_dict(),
                **({} if average is None else {"average": average.state_dict()}),
                "scheduler": scheduler.state_dict() if scheduler is not None else {},
                "scaler": scaler.state_dict(), "elapsed_s": run_dir.elapsed(),
                **{k: v for k, v in state.items()}})
            prune_checkpoints(folder, settings.keep_checkpoints)
        log.info("%s epoch %d/%d: %s", settings.phase, epoch, settings.epochs,
                 ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
        if stop:
            log.info("%s: early stop after %d epochs without a better val macro-F1", settings.phase, state["stale"])
            break
    return _result(state, best_path)


def _train_epoch(model: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, batches: Iterable[Batch], device: torch.device,
                 settings: FitSettings, epoch: int, step: int, folder: Path,
                 average: AveragedModel | None) -> tuple[dict[str, float], int]:
    model.train()
    sums: dict[str, float] = {}
    count = 0
    bar = progress(batches, desc=f"{settings.phase} {epoch}/{settings.epochs}", disable=not is_main_process(),
                   mininterval=1.0)
    for images, labels, *masks in bar:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        masks = [mask.to(device, non_blocking=True) for mask in masks]  # passed only when the batches carry them
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, settings.amp, settings.cpu_bf16):
            output = model(images)
            loss, parts = objective.loss(output, images, labels, *masks)
        loss_value = loss.detach().item()
        check_finite({"loss": loss_value}, f"{settings.phase} epoch {epoch} step {step}", folder)
        scaler.scale(loss).backward()
        if settings.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if average is not None:
            average.update_parameters(getattr(model, "module", model))
        step += 1
        batch = labels.shape[0]
        count += batch
        for name, value in {"loss": loss_value, **parts}.items():
            sums[name] = sums.get(name, 0.0) + value * batch
        bar.set_postfix(loss=f"{loss_value:.4f}")
    return {name: total / max(count, 1) for name, total in sums.items()}, step


def _resume(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler | None, scaler: torch.amp.GradScaler,
            run_dir: RunDir, phase: str, average: AveragedModel | None) -> dict[str, Any]:
    """Restore the newest checkpoint of ``phase`` with its weight ``average`` (and rewind its metrics), or a
    fresh state."""
    state: dict[str, Any] = {"epoch": 0, "step": 0, "best_score": -1.0, "best_epoch": 0, "best_val": {},
                             "stale": 0, "stopped_early": False}
    path = latest_checkpoint(folder)
    if path is None:
        return state
    saved = load_checkpoint(path)
    getattr(model, "module", model).load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    if average is not None:
        if "average" not in saved:
            raise UserError(f"{path} was saved without a weight average; resume with train.ema_decay=0 "
                            f"or start the phase afresh")
        average.load_state_dict(saved["average"])
    state.update({k: saved[k] for k in state})
    run_dir.resumed_elapsed = max(run_dir.resumed_elapsed, float(saved.get("elapsed_s", 0.0)))
    if is_main_process():
        run_dir.rewind_metrics(lambda r: r.get("phase") != phase or r.get("epoch", 0) <= state["epoch"])
    log.info("%s: resumed from %s (epoch %d)", phase, path, state["epoch"])
    return state


def _result(state: dict[str, Any], best_path: Path) -> FitResult:
    return FitResult(best_epoch=state["best_epoch"], best_val=state["best_val"], epochs_run=state["epoch"],
                     stopped_early=state["stopped_early"], best_path=best_path)


def _plain_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics as plain python (checkpoints are loaded with ``weights_only=True``)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, list, dict))}


def _phase_key(phase: str) -> int:
    """A stable integer for a phase name (for seeding)."""
    return int.from_bytes(phase.encode()[:8].ljust(8, b"\0"), "little") % 2**31
