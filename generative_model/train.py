"""Train the anatomy-conditioned pix2pix generator on crops of one fold's training patients
(``generative_model.pairs``: a real slice with its dilated tumour erased plus the class-coded tumour mask in,
the real crop out; and healthy pairs, where another slice's tumour shape is erased and healthy tissue painted).

    python generative_model/train.py [data.root=PATH] [data.image_size=128] [fold=0|null] [train.epochs=4]
        [train.epochs_decay=4] [net.ngf=32] [condition.crop_size=64] [loss.hole_weight=4] [loss.lambda_cls=5]
        [resume=true]

Writes into ``run_dir`` (default ``runs/generative_model/<split>-k<k>/<size>px/fold<k>``): ``config.yaml``,
``metrics.jsonl`` (losses, learning rate, condition | real | fake grids), ``checkpoints/epoch-NNNN.pt`` each
epoch, ``generator.pt`` (what synthesis loads; both formats live in ``generative_model.checkpoint``),
``quality.json`` (its ``reconstruction`` section) + grids on the fold's validation patients, and
``summary.json``. ``resume=true`` continues from the newest epoch checkpoint and, because every epoch reseeds
from ``(seed, epoch)``, ends with the same weights as an uninterrupted run.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from datasets.config import check_data, data_identity
from experiment.checkpoint import latest_checkpoint
from experiment.cli import reports_user_errors, run_hydra_app
from experiment.config import check_train
from experiment.device import describe, select_device
from experiment.engine import check_finite
from experiment.errors import ConfigError, UserError
from experiment.monitor import build_monitor
from experiment.progress import progress
from experiment.rundir import RunDir
from experiment.seeding import derive_seed, seed_everything
from generative_model import config
from generative_model.checkpoint import (
    GENERATOR_FILE,
    build_generator,
    generator_arch,
    load_training_checkpoint,
    save_generator,
    save_training_checkpoint,
)
from generative_model.conditions import CONDITION_CHANNELS, NUM_CLASSES, scaled
from generative_model.folds import FoldData, load_fold_data
from generative_model.losses import GANLoss
from generative_model.networks import IMAGE_SIZES, define_D, get_norm_layer, init_weights
from generative_model.pairs import TrainingPairs
from generative_model.pix2pix import Pix2Pix, count_parameters, generate
from generative_model.quality import comparison_grid, reconstruction_report, update_quality

log = logging.getLogger(__name__)
config.register()


class ResumeRefused(UserError, FileExistsError):
    """``run_dir`` already holds checkpoints but ``resume`` is false."""


def build_pix2pix(cfg: DictConfig, device: torch.device) -> Pix2Pix:
    """Generator, discriminator, losses, optimisers and schedulers from the config."""
    net = cfg.net
    generator = build_generator(generator_arch(net, cfg.condition, cfg.data.image_size), init_type=net.init_type,
                                init_gain=net.init_gain)
    discriminator = define_D(input_nc=CONDITION_CHANNELS + 1, ndf=net.ndf, n_layers=net.d_layers, norm=net.norm,
                             init_type=net.init_type, init_gain=net.init_gain,
                             num_classes=NUM_CLASSES if cfg.loss.lambda_cls > 0 else 0)
    return Pix2Pix(generator=generator, discriminator=discriminator, lr=cfg.train.lr, beta1=cfg.train.beta1,
                   gan_mode=cfg.loss.gan_mode, lambda_l1=cfg.loss.lambda_l1, epochs=cfg.train.epochs,
                   epochs_decay=cfg.train.epochs_decay, device=device, amp=cfg.amp, hole_weight=cfg.loss.hole_weight,
                   lambda_cls=cfg.loss.lambda_cls)


def check_config(cfg: DictConfig) -> None:
    """Refuse ``data.*``, ``train.*``, ``net.*``, ``loss.*`` and ``condition.*`` settings that cannot work, before
    any data is loaded (names are checked by the builders that use them).

    Raises:
        ConfigError: naming the key.
    """
    check_data(cfg.data)
    check_train(cfg.train)
    checks = [("train.log_every", cfg.train.log_every, isinstance(cfg.train.log_every, int)
               and cfg.train.log_every >= 1, "a positive integer"),
              ("train.preview_count", cfg.train.preview_count, isinstance(cfg.train.preview_count, int)
               and cfg.train.preview_count >= 1, "a positive integer"),
              ("train.beta1", cfg.train.beta1, 0 <= cfg.train.beta1 < 1, "in [0, 1)"),
              ("loss.lambda_l1", cfg.loss.lambda_l1, cfg.loss.lambda_l1 >= 0, "a number >= 0"),
              ("loss.hole_weight", cfg.loss.hole_weight, cfg.loss.hole_weight >= 1, "a number >= 1"),
              ("loss.lambda_cls", cfg.loss.lambda_cls, cfg.loss.lambda_cls >= 0, "a number >= 0"),
              ("condition.crop_size", cfg.condition.crop_size, cfg.condition.crop_size in IMAGE_SIZES
               and cfg.condition.crop_size <= cfg.data.image_size, f"one of {IMAGE_SIZES} <= data.image_size"),
              *((f"condition.{key}", cfg.condition[key], cfg.condition[key] >= 0, "a number >= 0")
                for key in ("erase_radius", "jitter")),
              ("condition.healthy_prob", cfg.condition.healthy_prob, 0 <= cfg.condition.healthy_prob <= 1,
               "a probability in [0, 1]"),
              *((f"net.{key}", cfg.net[key], isinstance(cfg.net[key], int) and cfg.net[key] >= 1,
                 "a positive integer") for key in ("ngf", "ndf", "d_layers"))]
    for key, value, ok, what in checks:
        if not ok:
            raise ConfigError(f"{key} must be {what}, got {value!r}")
    for key, builder in (("net.norm", lambda: get_norm_layer(cfg.net.norm)),
                         ("net.init_type", lambda: init_weights(torch.nn.Identity(), cfg.net.init_type)),
                         ("loss.gan_mode", lambda: GANLoss(cfg.loss.gan_mode))):
        try:
            builder()
        except ValueError as error:
            raise ConfigError(f"{key}: {error}") from error


def training_pairs(cfg: DictConfig, fold: FoldData, index: np.ndarray, *, train: bool) -> TrainingPairs:
    """The pairs of slices ``index`` of ``fold.data`` under ``condition.*``: jittered with healthy pairs for
    training (``train``), centred tumour pairs only for the quality report."""
    size, condition = cfg.data.image_size, cfg.condition
    data = fold.data
    return TrainingPairs(data.images[index], data.masks[index], data.labels[index], crop=condition.crop_size,
                         erase_radius=scaled(condition.erase_radius, size),
                         jitter=round(scaled(condition.jitter, size)) if train else 0,
                         healthy_prob=condition.healthy_prob if train else 0.0)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train (or resume) the generator of ``cfg.fold``; return the run summary.

    Raises:
        DataError / ConfigError: bad data root, a class without training slices, a fold out of range.
        ResumeRefused: ``run_dir`` already holds checkpoints and ``resume`` is false.
        CheckpointError: the checkpoint to resume is unreadable or was made for another architecture.
        NonFiniteLossError: a NaN/inf loss (the last good checkpoint stays).
        ConfigError: a setting that cannot work (:func:`check_config`, checked before anything is loaded).
    """
    check_config(cfg)
    fold = load_fold_data(cfg.data, cfg.fold)
    device = select_device(cfg.device)
    run_dir = RunDir(cfg.run_dir)
    run_dir.claim({**data_identity(cfg.data, fold.data.fingerprint), "fold": cfg.fold, "seed": cfg.seed,
                   "net": OmegaConf.to_container(cfg.net, resolve=True),
                   "condition": OmegaConf.to_container(cfg.condition, resolve=True)})
    resume_from = latest_checkpoint(run_dir.checkpoints)
    if resume_from is not None and not cfg.resume:
        raise ResumeRefused(f"{run_dir.path} already holds checkpoints (newest {resume_from.name}); pass "
                              "resume=true to continue that run or choose another run_dir=")
    run_dir.write_config(cfg)
    seed_everything(cfg.seed)  # the initial weights
    model = build_pix2pix(cfg, device)
    arch = generator_arch(cfg.net, cfg.condition, cfg.data.image_size)
    start_epoch = _resume(model, run_dir, resume_from, arch) if resume_from is not None else 0
    log.info("pix2pix on %s; %s", fold.describe(), describe(device))

    pairs = training_pairs(cfg, fold, fold.train, train=True)
    total_epochs = cfg.train.epochs + cfg.train.epochs_decay
    batch_size = cfg.train.batch_size
    steps_per_epoch = math.ceil(fold.train.size / batch_size)
    preview = np.arange(min(cfg.train.preview_count, fold.train.size))
    monitor = build_monitor(run_dir, cfg.monitor)
    epoch_losses: dict[str, float] = {}
    try:
        for epoch in range(start_epoch + 1, total_epochs + 1):
            seed_everything(cfg.seed, epoch)
            rng = np.random.default_rng(derive_seed(cfg.seed, epoch))
            order = rng.permutation(fold.train.size)
            model.train()
            sums = dict.fromkeys(model.loss_names, 0.0)
            bar = progress(range(steps_per_epoch), desc=f"pix2pix epoch {epoch}/{total_epochs}", mininterval=2)
            for step in bar:
                model.set_input(*pairs.batch(order[step * batch_size:(step + 1) * batch_size], rng))
                losses = model.optimize_parameters()
                global_step = (epoch - 1) * steps_per_epoch + step + 1
                check_finite(losses, f"pix2pix epoch {epoch} step {global_step}", run_dir.checkpoints)
                sums = {name: sums[name] + losses[name] for name in model.loss_names}
                if global_step % cfg.train.log_every == 0:
                    monitor.scalars("train", epoch, global_step, losses)
                bar.set_postfix(G_L1=f"{losses['G_L1']:.3f}", D_fake=f"{losses['D_fake']:.3f}", refresh=False)
            epoch_losses = {name: total / steps_per_epoch for name, total in sums.items()}
            lr = model.update_learning_rate()
            monitor.scalars("epoch", epoch, global_step, {**epoch_losses, "lr": lr})
            conditions, reals, _ = (np.stack(part) for part in zip(*(pairs.pair(i) for i in preview), strict=True))
            fakes = generate(model.netG, conditions, device=device, amp=cfg.amp)
            monitor.image("train", epoch, global_step, "condition-real-fake", comparison_grid(conditions, reals, fakes))
            save_training_checkpoint(run_dir.checkpoints, model, arch, epoch=epoch, elapsed=run_dir.elapsed(),
                                     keep=cfg.train.keep_checkpoints)
            log.info("epoch %d/%d: %s, lr %.2e", epoch, total_epochs,
                     ", ".join(f"{k} {v:.4f}" for k, v in epoch_losses.items()), lr)
    finally:
        monitor.close()
    return _finish(cfg, model, fold, run_dir, arch, device, total_epochs, epoch_losses)


def _resume(model: Pix2Pix, run_dir: RunDir, path: Path, arch: dict[str, Any]) -> int:
    """Load ``path`` into ``model``, drop metrics written after it, and return its epoch."""
    epoch, run_dir.resumed_elapsed = load_training_checkpoint(path, model, arch)
    run_dir.rewind_metrics(lambda record: record.get("epoch", 0) <= epoch)
    log.info("resumed %s at epoch %d", path, epoch)
    return epoch


def _finish(cfg: DictConfig, model: Pix2Pix, fold: FoldData, run_dir: RunDir, arch: dict[str, Any],
            device: torch.device, total_epochs: int, epoch_losses: dict[str, float]) -> dict[str, Any]:
    """Write ``generator.pt``, the reconstruction section of ``quality.json`` (validation patients) and
    ``summary.json``."""
    generator_path = run_dir.path / GENERATOR_FILE
    save_generator(generator_path, model.netG, arch, epoch=total_epochs, fold=fold.fold, folds_file=fold.folds_file,
                   data_fingerprint=fold.data.fingerprint)
    quality = None
    if fold.val.size:
        quality = reconstruction_report(model.netG, training_pairs(cfg, fold, fold.val, train=False), run_dir.path,
                                        device=device, batch_size=cfg.train.batch_size * 4, amp=cfg.amp)
        update_quality(run_dir.path, {"reconstruction": quality})
    if not epoch_losses:  # resumed a finished run: report its last epoch's losses
        epoch_records = [r for r in run_dir.read_metrics() if r.get("phase") == "epoch"]
        epoch_losses = epoch_records[-1]["values"] if epoch_records else {}
    summary = {
        "trained_on": fold.describe(),
        "fold": fold.fold,
        "folds_file": fold.folds_file,
        "data_source": fold.data.source,
        "data_fingerprint": fold.data.fingerprint,
        "train_slices": int(fold.train.size),
        "train_class_counts": np.bincount(fold.data.labels[fold.train], minlength=3).tolist(),
        "image_size": int(cfg.data.image_size),
        "epochs": total_epochs,
        "params": {"generator": count_parameters(model.netG), "discriminator": count_parameters(model.netD)},
        "arch": arch,
        "final_losses": epoch_losses,
        "generator": str(generator_path),
        "quality": quality,
        "device": describe(device),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    run_dir.write_summary(summary)
    log.info("generator written to %s (%s)", generator_path, fold.describe())
    return run_dir.read_summary()


@hydra.main(config_path="configs", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    reports_user_errors(run)(cfg)


if __name__ == "__main__":
    run_hydra_app(main)
