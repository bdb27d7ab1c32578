"""Capsule network vs ResNet50 on the CPU, measured in one run: parameters, single-slice latency
(batch 1, eager PyTorch and ONNX Runtime) and training images/s in float32 and under bfloat16 autocast
(``cpu_bf16=true``), at 128 and 256 px.

    python benchmarks/bench_classifier.py [--sizes 128 256] [--threads N] [--train-batch 16] [--train-steps 3]

Latency is the median of ``--repeats`` timed calls after warm-up; training throughput times
``--train-steps`` AdamW steps (forward, loss, backward, update) after one warm-up step. Ratios are
ResNet50 / capsnet, so larger means capsnet is smaller or faster; the bf16 speed-up is bfloat16 / float32
training throughput of the same model in the same run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from capsule_classifier import BASELINE, build_model, build_objective, parameter_counts
from capsule_classifier.deploy import ProbabilityModel
from capsule_classifier.export import INPUT_NAME, OUTPUT_NAME, to_onnx_bytes
from experiment.atomic import atomic_write_json
from experiment.device import autocast

MODELS = ("capsnet", BASELINE)


def median_seconds(call: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``call`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def onnx_latency(classifier: ProbabilityModel, size: int, repeats: int) -> float:
    """Median batch-1 latency of the exported model under ONNX Runtime (CPU)."""
    import onnxruntime

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(to_onnx_bytes(classifier, size))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {INPUT_NAME: torch.rand(1, 1, size, size).numpy()}
        return median_seconds(lambda: session.run([OUTPUT_NAME], feed), repeats)


def training_rate(name: str, size: int, batch: int, steps: int, cpu_bf16: bool = False) -> float:
    """Training images/s: AdamW steps on random slices with the model's own objective (optionally under
    bfloat16 autocast, as ``capsule_classifier/train.py cpu_bf16=true`` trains)."""
    torch.manual_seed(0)
    model = build_model(name, image_size=size).train()
    objective = build_objective(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, targets = torch.rand(batch, 1, size, size), torch.arange(batch) % 3

    def step() -> None:
        with autocast(torch.device("cpu"), cpu_bf16=cpu_bf16):
            loss, _ = objective.loss(model(images), images, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return batch / median_seconds(step, steps, warmup=1)


def measure(name: str, size: int, repeats: int, train_batch: int, train_steps: int) -> dict[str, Any]:
    """All numbers of one model at one input size."""
    torch.manual_seed(0)
    model = build_model(name, image_size=size).eval()
    classifier = ProbabilityModel(model, build_objective(name)).eval()
    single = torch.rand(1, 1, size, size)
    with torch.no_grad():
        eager = median_seconds(lambda: classifier(single), repeats)
    fp32 = training_rate(name, size, train_batch, train_steps)
    bf16 = training_rate(name, size, train_batch, train_steps, cpu_bf16=True)
    counts = parameter_counts(model, name, size, num_classes=3)
    return {"model": name, "size": size, "parameters": counts["model"],
            "parameters_inference": counts["model_without_decoder"],
            "eager_ms": 1e3 * eager, "onnx_ms": 1e3 * onnx_latency(classifier, size, repeats),
            "train_images_per_s": fp32, "train_images_per_s_bf16": bf16, "bf16_speedup": bf16 / fp32}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [measure(name, size, args.repeats, args.train_batch, args.train_steps)
               for size in args.sizes for name in MODELS]
    print(f"CPU threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}")
    print(f"{'model':<10}{'size':>6}{'params':>12}{'eager ms':>10}{'onnx ms':>10}{'train img/s':>13}"
          f"{'bf16 img/s':>12}{'bf16 x':>8}")
    for r in results:
        print(f"{r['model']:<10}{r['size']:>6}{r['parameters']:>12,}{r['eager_ms']:>10.2f}{r['onnx_ms']:>10.2f}"
              f"{r['train_images_per_s']:>13.1f}{r['train_images_per_s_bf16']:>12.1f}{r['bf16_speedup']:>8.2f}")
    ratios = []
    for size in args.sizes:
        caps, resnet = (next(r for r in results if r["model"] == m and r["size"] == size) for m in MODELS)
        ratio = {"size": size,
                 "params (all)": resnet["parameters"] / caps["parameters"],
                 "params (inference)": resnet["parameters"] / caps["parameters_inference"],
                 "eager latency": resnet["eager_ms"] / caps["eager_ms"],
                 "onnx latency": resnet["onnx_ms"] / caps["onnx_ms"],
                 "training speed": caps["train_images_per_s"] / resnet["train_images_per_s"],
                 "training speed vs ResNet50 bf16": caps["train_images_per_s"] / resnet["train_images_per_s_bf16"]}
        ratios.append(ratio)
        print(f"ResNet50 / capsnet at {size}px: " + ", ".join(f"{k} x{v:.1f}" for k, v in ratio.items() if k != "size"))
    if args.json:
        atomic_write_json(args.json, {"results": results, "ratios": ratios, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
