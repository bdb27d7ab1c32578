"""Generator throughput on this machine, old design against new, in one run: training images/s (one G+D pix2pix
step) and synthesis images/s.

* old (``full``): the full-slice generator this project used before the anatomy design, kept here only as a
  baseline: a U-Net painting the whole ``--size`` px slice from a 5-channel head/tumour condition; synthesis =
  one forward pass per slice (its condition augmentation not counted, which favours it).
* new (``anatomy``): the default ``generative_model`` design: ``condition.crop_size`` px crops around the
  tumour; synthesis = ``generative_model.transplant.Donors.paint`` end to end (heal the donor's tumour, paint
  the new one: two crop passes plus the pasting) on toy slices.

    python benchmarks/bench_gan.py [--size 128] [--widths 32 64] [--batch 8] [--steps 3] [--device auto]
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from datasets.core import SliceSet
from experiment.device import describe, select_device
from experiment.seeding import seed_everything
from generative_model.checkpoint import build_generator, generator_arch
from generative_model.conditions import CONDITION_CHANNELS
from generative_model.config import ConditionConfig, GeneratorTrainConfig, LossConfig, NetConfig
from generative_model.networks import define_D, define_G
from generative_model.pix2pix import Pix2Pix, generate
from generative_model.transplant import Donors

OLD_CONDITION_CHANNELS = 5  # brain, edge and one tumour channel per class
SYNTH_SLICES = 32  # synthetic slices per timed synthesis call


def timed(fn: Callable[[], object], steps: int) -> float:
    """Seconds per call of ``fn`` after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def train_rate(generator: torch.nn.Module, side: int, channels: int, width: int, batch: int, steps: int,
               device: torch.device) -> float:
    """Training images/s of full G+D pix2pix steps on ``side`` px inputs."""
    net, train, loss = NetConfig(), GeneratorTrainConfig(), LossConfig()
    discriminator = define_D(input_nc=channels + 1, ndf=width, n_layers=net.d_layers, norm=net.norm)
    model = Pix2Pix(generator=generator, discriminator=discriminator, lr=train.lr, beta1=train.beta1,
                    gan_mode=loss.gan_mode, lambda_l1=loss.lambda_l1, epochs=1, epochs_decay=0, device=device,
                    hole_weight=loss.hole_weight)
    condition, real = torch.rand(batch, channels, side, side), torch.rand(batch, 1, side, side) * 2 - 1
    hole = (torch.rand(batch, 1, side, side) > 0.8).float()

    def step() -> None:
        model.train()
        model.set_input(condition, real, hole)
        model.optimize_parameters()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return batch / timed(step, steps)


def toy_slices(size: int, count: int = 24) -> SliceSet:
    """Disk-shaped heads with a bright round tumour each, two planes, one patient per slice."""
    rng = np.random.default_rng(0)
    y, x = np.ogrid[:size, :size]
    head = np.hypot(y - size / 2, x - size / 2) < size * 0.4
    centres = rng.uniform(size * 0.3, size * 0.7, size=(count, 2))
    masks = np.stack([np.hypot(y - cy, x - cx) < size * 0.05 for cy, cx in centres])
    images = np.stack([np.where(m, 230, np.where(head, 120, 5) + rng.integers(0, 20, (size, size)))
                       for m in masks]).astype(np.uint8)
    return SliceSet(images, masks, np.arange(count) % 3, np.arange(count), np.arange(count).astype(str),
                    np.array(["axial", "coronal"])[np.arange(count) // 3 % 2], np.zeros(count, dtype=np.int64),
                    "toy", "toy")


def measure_old(size: int, width: int, batch: int, steps: int, device: torch.device) -> dict[str, float]:
    seed_everything(0, size, width)
    net = NetConfig()
    generator = define_G(input_nc=OLD_CONDITION_CHANNELS, image_size=size, ngf=width, norm=net.norm,
                         use_dropout=net.dropout)
    conditions = np.random.default_rng(0).random((SYNTH_SLICES, OLD_CONDITION_CHANNELS, size, size), np.float32)
    synth_s = timed(lambda: generate(generator.to(device), conditions, device=device, batch_size=64,
                                     stochastic=True), steps)
    return {"train_img_s": train_rate(generator, size, OLD_CONDITION_CHANNELS, width, batch, steps, device),
            "synth_img_s": SYNTH_SLICES / synth_s}


def measure_new(size: int, width: int, batch: int, steps: int, device: torch.device) -> dict[str, float]:
    seed_everything(0, size, width)
    arch = generator_arch(NetConfig(ngf=width, ndf=width), ConditionConfig(), size)
    generator = build_generator(arch).to(device)
    donors = Donors(toy_slices(size), crop=arch["crop_size"], erase_radius=arch["erase_radius"], margin=2.0,
                    feather=1.5, tries=200, neighbours=16)
    rng = np.random.default_rng(0)
    plans = [donors.draw(k % 3, rng) for k in range(SYNTH_SLICES)]
    synth_s = timed(lambda: donors.paint(generator, plans, device=device, batch_size=64, stochastic=True,
                                         amp=True), steps)
    return {"train_img_s": train_rate(generator, arch["crop_size"], CONDITION_CHANNELS, width, batch, steps, device),
            "synth_img_s": SYNTH_SLICES / synth_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--widths", type=int, nargs="+", default=[NetConfig().ngf])
    parser.add_argument("--batch", type=int, default=GeneratorTrainConfig().batch_size)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = select_device(args.device)
    print(f"# {describe(device)}; {args.size} px slices; batch {args.batch}; {args.steps} timed calls after 1 "
          f"warm-up; crop {ConditionConfig().crop_size} px")
    print(f"{'design':>8} {'ngf':>4} {'train img/s':>12} {'synth img/s':>12} {'train x':>8} {'synth x':>8}")
    for width in args.widths:
        old = measure_old(args.size, width, args.batch, args.steps, device)
        new = measure_new(args.size, width, args.batch, args.steps, device)
        for name, result in (("full", old), ("anatomy", new)):
            print(f"{name:>8} {width:>4} {result['train_img_s']:>12.1f} {result['synth_img_s']:>12.1f} "
                  f"{result['train_img_s'] / old['train_img_s']:>7.2f}x "
                  f"{result['synth_img_s'] / old['synth_img_s']:>7.2f}x")


if __name__ == "__main__":
    main()
