"""Train, select and test a 3D video ResNet on NIfTI volumes (HGG / LGG / healthy).

    python spatiospatial/run.py [model=mc3_18] [data.root=PATH] [train.batch_size=2]
    python spatiospatial/run.py data=brats_ixi data.root=/data/brats_ixi data.modality=flair
    python spatiospatial/run.py -m train.batch_size=2,5,10
    torchrun --nproc_per_node=2 spatiospatial/run.py model=r2plus1d_18

Volumes (by default the embedded 3D sample) are scanned, preprocessed once into the cache and split by
subject (``data.splits_dir``, ``runs/splits/volumes-*.json``).
The shared engine trains with per-epoch checkpoints and exact resume, selects the epoch with the best
validation macro-F1 and evaluates it once on the test subjects. The run directory receives
``config.yaml``, ``metrics.jsonl``, ``checkpoints/`` and ``summary.json`` (written last: a run with a
summary is finished and is not rerun), which records parameters and forward FLOPs of the model.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from datasets.augment import volume_augmentation
from datasets.config import check_split_settings
from datasets.core import DataError, check_allocation, default_cache_dir
from datasets.volume_splits import load_or_make_split, split_records
from datasets.volumes import (
    AXES,
    CLASS_NAMES,
    LAYOUTS,
    MODALITIES,
    VolumeDataset,
    VolumeSpec,
    prepare_volumes,
    resolve_hook,
    scan_volumes,
)
from experiment import config as experiment_config
from experiment.batches import TrainBatches, eval_batches
from experiment.checkpoint import load_checkpoint, load_model_state
from experiment.cli import reports_user_errors, run_hydra_app
from experiment.device import describe
from experiment.distributed import barrier, cleanup, is_main_process, rank, setup_device, world_size
from experiment.engine import FitSettings, evaluate, fit
from experiment.errors import ConfigError
from experiment.monitor import Monitor, build_monitor
from experiment.objectives import CrossEntropyObjective
from experiment.rundir import RunDir
from spatiospatial import config as spatiospatial_config
from spatiospatial.models import build_model, profile

log = logging.getLogger(__name__)

STEM_EXPANSION = 16
"""Floats the video ResNets' stem outputs per input voxel (64 channels at half the height and width)."""
PHASE = "train"
PHASE_KEY = 1
"""Seed key of the training phase's sampling, loader and flip streams."""

experiment_config.register()
spatiospatial_config.register()


def balanced_class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """``n / (C * n_c)`` per class (classes absent from training weigh 0), so rare classes count as much."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def check_config(cfg: DictConfig) -> None:
    """Refuse ``train.*`` and ``data.*`` settings that cannot work, before any volume is read: positive epochs,
    batch size and learning rate, three positive voxel counts and spacings (a batch's stem output within the
    allocation limit), a known layout, modality and time axis, validation and test shares in (0, 0.5), an
    importable hook.

    Raises:
        ConfigError: naming the key; DataError: a shape over the allocation limit.
    """
    experiment_config.check_train(cfg.train)
    data = cfg.data
    checks = [("train.num_workers", cfg.train.num_workers, isinstance(cfg.train.num_workers, int)
               and cfg.train.num_workers >= 0, "an integer >= 0"),
              ("data.shape", data.shape, len(data.shape) == 3 and all(isinstance(n, int) and n >= 1
                                                                      for n in data.shape), "three positive integers"),
              ("data.spacing", data.spacing, len(data.spacing) == 3 and all(0 < s < float("inf")
                                                                            for s in data.spacing),
               "three positive numbers (mm)"),
              *((f"data.{key}", data[key], data[key] in choices, f"one of {choices}")
                for key, choices in (("layout", LAYOUTS), ("modality", MODALITIES), ("time_axis", AXES)))]
    check_split_settings(val_fraction=data.val_fraction, test_fraction=data.test_fraction)
    for key, value, ok, what in checks:
        if not ok:
            raise ConfigError(f"{key} must be {what}, got {value!r}")
    voxels = int(np.prod(data.shape, dtype=np.int64))
    check_allocation(STEM_EXPANSION * cfg.train.batch_size * voxels * 4,
                     f"data.shape={list(data.shape)} with train.batch_size={cfg.train.batch_size} (the stem's output)")
    try:
        resolve_hook(data.hook)
    except (ValueError, ImportError) as error:
        raise ConfigError(f"data.hook: {error}") from error


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, select and test one configuration; return its summary (read back when already finished).

    Raises:
        UserError: a bad setting (:func:`check_config`, checked first), bad volumes or split manifest, a run
            directory of another experiment, or a diverged loss; the message names the input.
    """
    check_config(cfg)
    device, distributed = setup_device(cfg.device)
    run_dir = RunDir(cfg.run_dir)
    try:
        finished = run_dir.read_summary()
        if finished is not None:
            log.info("run already finished: %s", run_dir.summary_path)
            return finished
        return _run(cfg, run_dir, device, distributed)
    finally:
        cleanup()


def _run(cfg: DictConfig, run_dir: RunDir, device: torch.device, distributed: bool) -> dict[str, Any]:
    data = cfg.data
    spec = VolumeSpec(tuple(data.shape), tuple(data.spacing), resolve_hook(data.hook))
    cache_dir = data.cache_dir or default_cache_dir() / "volumes"
    if not is_main_process():
        barrier()  # the main process fills the cache and writes the split first
    scan = prepare_volumes(scan_volumes(data.root, data.layout, data.modality, data.strict), spec, cache_dir,
                           data.strict)
    manifest, split_path = load_or_make_split(scan, data.splits_dir, data.split_seed, data.val_fraction,
                                              data.test_fraction)
    if is_main_process():
        barrier()
        run_dir.claim({"split": Path(split_path).name, "model": cfg.model.name, "shape": list(data.shape),
                       "spacing": list(data.spacing), "time_axis": data.time_axis, "seed": cfg.seed})
        run_dir.write_config(cfg)
    parts = {part: VolumeDataset(records, spec, data.time_axis, cache_dir)
             for part, records in split_records(manifest, scan).items()}
    for part in ("train", "test"):
        if len(parts[part]) == 0:
            raise DataError(f"split {split_path} has no {part} volumes; a class needs at least 3 subjects "
                             "to reach the test set")
    log.info("volumes: %s", {part: len(ds) for part, ds in parts.items()})

    model = build_model(cfg.model.name, num_classes=len(CLASS_NAMES), in_channels=1,
                        weights_path=cfg.model.weights_path)
    cost = profile(model, parts["train"].input_shape())
    log.info("%s: %d parameters, %.3g forward GFLOPs per volume", cfg.model.name, cost["parameters"],
             cost["forward_flops"] / 1e9)
    model.to(device)
    trained: nn.Module = DistributedDataParallel(model) if distributed else model
    train, train_labels = cfg.train, [r.label for r in parts["train"].records]
    objective = CrossEntropyObjective(balanced_class_weights(train_labels, len(CLASS_NAMES))
                                      if train.class_weights else None)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train.epochs)
    flip = volume_augmentation(2 + parts["train"].dim_of("x")) if train.flip else None  # x: left-right
    batches = TrainBatches(parts["train"], train_labels, train.batch_size, cfg.seed, key=PHASE_KEY,
                           augmentation=flip, rank=rank(), world_size=world_size(), num_workers=train.num_workers,
                           drop_last=False)
    val_loader = _eval_loader(parts["val"], cfg) if len(parts["val"]) else None
    monitor = build_monitor(run_dir, cfg.monitor) if is_main_process() else Monitor(run_dir)
    try:
        settings = FitSettings(phase=PHASE, epochs=train.epochs, seed=cfg.seed, patience=train.patience,
                               amp=cfg.amp, cpu_bf16=cfg.cpu_bf16, grad_clip=train.grad_clip,
                               keep_checkpoints=train.keep_checkpoints, ema_decay=train.ema_decay)
        result = fit(trained, objective, optimizer, scheduler, batches, val_loader, settings, run_dir, monitor,
                     device, CLASS_NAMES)
        if not is_main_process():
            return {}
        load_model_state(model, load_checkpoint(result.best_path)["model"], str(result.best_path))
        test, _, _ = evaluate(model, objective, _eval_loader(parts["test"], cfg), device, CLASS_NAMES,
                              cfg.amp, cfg.cpu_bf16)
        step = result.epochs_run * len(batches)
        run_dir.rewind_metrics(lambda r: r.get("phase") != "test")
        monitor.scalars("test", result.best_epoch, step, {"loss": test["loss"], "accuracy": test["accuracy"],
                                                          "macro_f1": test["macro_f1"]})
        monitor.confusion("test", result.best_epoch, step, "test_confusion", test["confusion_matrix"], CLASS_NAMES)
        summary = {
            "model": cfg.model.name, **cost, "input_shape": list(parts["train"].input_shape()),
            "time_axis": data.time_axis, "spacing_mm": list(spec.spacing), "classes": list(CLASS_NAMES),
            "data_root": str(scan.root), "data_fingerprint": scan.fingerprint, "split": str(split_path),
            "volumes": {part: manifest["parts"][part]["class_counts"] for part in manifest["parts"]},
            "skipped": scan.skipped, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early, "val": result.best_val, "test": test,
            "device": describe(device), "distributed": distributed,
        }
        run_dir.write_summary(summary)
        return run_dir.read_summary()
    finally:
        monitor.close()


def _eval_loader(dataset: VolumeDataset, cfg: DictConfig) -> DataLoader:
    return eval_batches(dataset, cfg.train.batch_size, cfg.train.num_workers)


@hydra.main(config_path="configs", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    summary = reports_user_errors(run)(cfg)
    if summary:
        print(f"{summary['model']}: {summary['parameters'] / 1e6:.2f} M parameters, "
              f"{summary['forward_flops'] / 1e9:.2f} GFLOPs per {'x'.join(map(str, summary['input_shape']))} volume; "
              f"test accuracy {summary['test']['accuracy']:.4f}, macro-F1 {summary['test']['macro_f1']:.4f} "
              f"-> {cfg.run_dir}")


if __name__ == "__main__":
    run_hydra_app(main)
