"""Cost of the three video ResNets on one-channel volumes: parameters, forward FLOPs and CPU time per
volume (batch 1), at several cubic sizes, in one run, with ratios against the full-3D ``r3d_18``.

    python benchmarks/bench_3d.py [--sizes 64 128] [--repeats 2] [--threads 2]

Does (2+1)D (``r2plus1d_18``) or mixed convolution (``mc3_18``) cost less than full 3D (``r3d_18``)?
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from spatiospatial import MODEL_NAMES, build_model, profile

BASELINE = "r3d_18"


def time_forward(model: torch.nn.Module, size: int, repeats: int) -> float:
    """Median wall seconds of one inference forward pass on a ``1x1xSxSxS`` volume."""
    volume = torch.randn(1, 1, size, size, size)
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            model(volume)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(sizes: list[int], repeats: int) -> dict[tuple[str, int], dict[str, float]]:
    """Parameters, forward FLOPs and seconds per volume for every model and size."""
    results = {}
    for name in MODEL_NAMES:
        model = build_model(name, num_classes=3, in_channels=1).eval()
        time_forward(model, min(sizes), 1)  # warm-up (allocator, kernels)
        for size in sizes:
            cost = profile(model, (1, size, size, size))
            results[name, size] = {**cost, "seconds": time_forward(model, size, repeats)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = measure(args.sizes, args.repeats)
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads, batch 1, median of {args.repeats}")
    print(f"{'model':<13}{'size':>6}{'params (M)':>12}{'GFLOPs':>10}{'s/volume':>10}"
          f"{'params x':>10}{'FLOPs x':>9}{'time x':>8}   (x: ratio to {BASELINE})")
    for size in args.sizes:
        base = results[BASELINE, size]
        for name in MODEL_NAMES:
            r = results[name, size]
            print(f"{name:<13}{size:>4}^3{r['parameters'] / 1e6:>12.2f}{r['forward_flops'] / 1e9:>10.1f}"
                  f"{r['seconds']:>10.3f}{r['parameters'] / base['parameters']:>10.2f}"
                  f"{r['forward_flops'] / base['forward_flops']:>9.2f}{r['seconds'] / base['seconds']:>8.2f}")


if __name__ == "__main__":
    main()
