"""Train the conditional pix2pix generator on one fold's training patients.

    python generative_model/train.py [data.root=PATH] [data.image_size=128] [fold=0|null] [train.epochs=3]
        [train.epochs_decay=3] [net.ngf=32] [loss.gan_mode=lsgan] [resume=true] [monitor.visdom=false]

Writes into ``run_dir`` (default ``runs/generative_model/<split>-k<k>/<size>px/fold<k>``): ``config.yaml``,
``metrics.jsonl`` (losses, learning rate, condition | real | fake grids), ``checkpoints/epoch-NNNN.pt`` each
epoch, ``generator.pt`` (what synthesis loads; both formats live in ``generative_model.checkpoint``),
``quality.json`` + grids on the fold's validation patients, and ``summary.json``. ``resume=true`` continues
from the newest epoch checkpoint and, because every epoch reseeds from ``(seed, epoch)``, ends with the same
weights as an uninterrupted run.
"""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from datasets.config import check_data, data_identity
from experiment.checkpoint import latest_checkpoint
from experiment.cli import hydra_argv, reports_user_errors
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
    generator_arch,
    load_training_checkpoint,
    save_generator,
    save_training_checkpoint,
)
from generative_model.conditions import CONDITION_CHANNELS, Geometry, brain_masks, render_conditions
from generative_model.folds import FoldData, load_fold_data
from generative_model.losses import GANLoss
from generative_model.networks import define_D, define_G, get_norm_layer, init_weights
from generative_model.pix2pix import LOSS_NAMES, Pix2Pix, count_parameters, generate, images_to_tensor
from generative_model.quality import comparison_grid, quality_report

log = logging.getLogger(__name__)
config.register()

FLIP_PROB = 0.5  # pix2pix's random mirroring of (condition, image) pairs


class ResumeRefused(UserError, FileExistsError):
    """``run_dir`` already holds checkpoints but ``resume`` is false."""


def build_pix2pix(cfg: DictConfig, device: torch.device) -> Pix2Pix:
    """Generator, discriminator, losses, optimisers and schedulers from the config."""
    net = cfg.net
    generator = define_G(**generator_arch(net, cfg.data.image_size), init_type=net.init_type,
                         init_gain=net.init_gain)
    discriminator = define_D(input_nc=CONDITION_CHANNELS + 1, ndf=net.ndf, n_layers=net.d_layers, norm=net.norm,
                             init_type=net.init_type, init_gain=net.init_gain)
    return Pix2Pix(generator=generator, discriminator=discriminator, lr=cfg.train.lr, beta1=cfg.train.beta1,
                   gan_mode=cfg.loss.gan_mode, lambda_l1=cfg.loss.lambda_l1, epochs=cfg.train.epochs,
                   epochs_decay=cfg.train.epochs_decay, device=device, amp=cfg.amp)


def check_config(cfg: DictConfig) -> None:
    """Refuse ``data.*``, ``train.*``, ``net.*`` and ``loss.*`` settings that cannot work, before any data is
    loaded (names are checked by the builders that use them).

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


def make_batch(fold: FoldData, brains: np.ndarray, index: np.ndarray,
               rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditions and real images of training slices ``index`` (positions in ``fold.train``), each pair
    mirrored left-right with probability :data:`FLIP_PROB` when ``rng`` is given."""
    rows = fold.train[index]
    data = fold.data
    conditions = render_conditions([Geometry(brain=brains[i], tumour=data.masks[r], label=int(data.labels[r]))
                                    for i, r in zip(index, rows, strict=True)])
    images = data.images[rows]
    if rng is not None:
        flip = rng.random(len(index)) < FLIP_PROB
        conditions[flip] = conditions[flip][..., ::-1]
        images = np.where(flip[:, None, None], images[..., ::-1], images)
    return torch.from_numpy(np.ascontiguousarray(conditions)), images_to_tensor(images)


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
                   "net": OmegaConf.to_container(cfg.net, resolve=True)})
    resume_from = latest_checkpoint(run_dir.checkpoints)
    if resume_from is not None and not cfg.resume:
        raise ResumeRefused(f"{run_dir.path} already holds checkpoints (newest {resume_from.name}); pass "
                              "resume=true to continue that run or choose another run_dir=")
    run_dir.write_config(cfg)
    seed_everything(cfg.seed)  # the initial weights
    model = build_pix2pix(cfg, device)
    arch = generator_arch(cfg.net, cfg.data.image_size)
    start_epoch = _resume(model, run_dir, resume_from, arch) if resume_from is not None else 0
    log.info("pix2pix on %s; %s", fold.describe(), describe(device))

    brains = brain_masks(fold.data.images[fold.train], fold.data.masks[fold.train])
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
            sums = dict.fromkeys(LOSS_NAMES, 0.0)
            bar = progress(range(steps_per_epoch), desc=f"pix2pix epoch {epoch}/{total_epochs}", mininterval=2)
            for step in bar:
                model.set_input(*make_batch(fold, brains, order[step * batch_size:(step + 1) * batch_size], rng))
                losses = model.optimize_parameters()
                global_step = (epoch - 1) * steps_per_epoch + step + 1
                check_finite(losses, f"pix2pix epoch {epoch} step {global_step}", run_dir.checkpoints)
                sums = {name: sums[name] + losses[name] for name in LOSS_NAMES}
                if global_step % cfg.train.log_every == 0:
                    monitor.scalars("train", epoch, global_step, losses)
                bar.set_postfix(G_L1=f"{losses['G_L1']:.3f}", D_fake=f"{losses['D_fake']:.3f}", refresh=False)
            epoch_losses = {name: total / steps_per_epoch for name, total in sums.items()}
            lr = model.update_learning_rate()
            monitor.scalars("epoch", epoch, global_step, {**epoch_losses, "lr": lr})
            conditions = make_batch(fold, brains, preview)[0].numpy()
            fakes = generate(model.netG, conditions, device=device, amp=cfg.amp)
            monitor.image("train", epoch, global_step, "condition-real-fake",
                          comparison_grid(conditions, fold.data.images[fold.train[preview]], fakes))
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
    """Write ``generator.pt``, the quality report (validation patients) and ``summary.json``."""
    generator_path = run_dir.path / GENERATOR_FILE
    save_generator(generator_path, model.netG, arch, epoch=total_epochs, fold=fold.fold, folds_file=fold.folds_file,
                   data_fingerprint=fold.data.fingerprint)
    quality = None
    if fold.val.size:
        quality = quality_report(model.netG, fold.data.subset(fold.val), run_dir.path, device=device,
                                 batch_size=cfg.train.batch_size * 4, amp=cfg.amp)
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
    sys.argv = hydra_argv(sys.argv)
    main()
