"""Generator speed on this machine: forward images/s and training steps/s (one G+D pix2pix step) at
64/128/256 px, for the project's default width (``net.ngf``/``net.ndf`` of ``generative_model.config``)
against the standard pix2pix width ngf=ndf=64, both measured in the same run.

    python benchmarks/bench_gan.py [--sizes 64 128 256] [--batch 4] [--steps 3] [--device auto]
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from experiment.device import describe, select_device
from experiment.seeding import seed_everything
from generative_model.conditions import CONDITION_CHANNELS
from generative_model.config import GeneratorTrainConfig, LossConfig, NetConfig
from generative_model.networks import define_D, define_G
from generative_model.pix2pix import Pix2Pix

STANDARD_WIDTH = 64  # ngf = ndf of the pix2pix paper's U-Net and PatchGAN


def timed(fn: Callable[[], object], steps: int) -> float:
    """Seconds per call of ``fn`` after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def measure(size: int, width: int, batch: int, steps: int, device: torch.device) -> dict[str, float]:
    """Forward images/s of G and training steps/s of a full G+D step at ``size`` px and ``width`` channels."""
    seed_everything(0, size, width)
    net, train, loss = NetConfig(), GeneratorTrainConfig(), LossConfig()
    generator = define_G(input_nc=CONDITION_CHANNELS, image_size=size, ngf=width, norm=net.norm,
                         use_dropout=net.dropout)
    discriminator = define_D(input_nc=CONDITION_CHANNELS + 1, ndf=width, n_layers=net.d_layers, norm=net.norm)
    model = Pix2Pix(generator=generator, discriminator=discriminator, lr=train.lr, beta1=train.beta1,
                    gan_mode=loss.gan_mode, lambda_l1=loss.lambda_l1, epochs=1, epochs_decay=0, device=device)
    condition = torch.rand(batch, CONDITION_CHANNELS, size, size)
    real = torch.rand(batch, 1, size, size) * 2 - 1

    def forward() -> None:
        with torch.no_grad():
            model.netG.eval()(condition.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step() -> None:
        model.train()
        model.set_input(condition, real)
        model.optimize_parameters()
        if device.type == "cuda":
            torch.cuda.synchronize()

    forward_s = timed(forward, steps)
    step_s = timed(train_step, steps)
    return {"forward_img_s": batch / forward_s, "train_step_s": 1.0 / step_s, "train_img_s": batch / step_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batch", type=int, default=GeneratorTrainConfig().batch_size)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = select_device(args.device)
    default_width = NetConfig().ngf
    print(f"# {describe(device)}; batch {args.batch}; {args.steps} timed steps after 1 warm-up")
    print(f"{'size':>5} {'ngf':>4} {'G fwd img/s':>12} {'train it/s':>11} {'train img/s':>12} {'speed-up':>9}")
    for size in args.sizes:
        standard = measure(size, STANDARD_WIDTH, args.batch, args.steps, device)
        ours = measure(size, default_width, args.batch, args.steps, device)
        for width, result in ((STANDARD_WIDTH, standard), (default_width, ours)):
            ratio = result["train_img_s"] / standard["train_img_s"]
            print(f"{size:>5} {width:>4} {result['forward_img_s']:>12.1f} {result['train_step_s']:>11.2f} "
                  f"{result['train_img_s']:>12.1f} {ratio:>8.2f}x")


if __name__ == "__main__":
    main()
