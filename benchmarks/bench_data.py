"""Data-layer benchmark, measured against its baselines in one run.

(a) ``load_slices`` on a folder of generated MATLAB v7.3 slices: cold (parse + preprocess, fresh
    cache) versus from the preprocessed cache. Goal: cached at least 20x faster.
(b) Pickle shards (``write_shards`` / ``read_shards``, checksums verified) versus ``numpy.save`` /
    ``numpy.load`` of the same arrays, in MB/s. Goal: reading at least half numpy's speed.

Both sides of (b) read from the page cache (files just written). Run from the repository root::

    python -m benchmarks.bench_data                       # full size (3064 slices at 512 px)
    python -m benchmarks.bench_data --count 60 --size 128 --small-size 64 --shard-images 500   # quick
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from datasets.fixtures import write_mat_folder
from datasets.shards import read_shards, write_shards
from datasets.slices import load_slices

log = logging.getLogger("bench_data")


def best_time(function: Callable[[], object], repeats: int, setup: Callable[[], object] | None = None) -> float:
    """The fastest of ``repeats`` wall-clock runs of ``function`` in seconds (least disturbed by other load);
    ``setup`` runs untimed before each."""
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_mat_cache(workdir: Path, count: int, size: int, small_size: int, small_every: int, image_size: int,
                    repeats: int) -> dict[str, float]:
    """Seconds for a cold ``load_slices`` of ``count`` generated v7.3 files and for a cached one."""
    folder, cache = workdir / "mat", workdir / "cache"
    start = time.perf_counter()
    write_mat_folder(folder, count=count, size=size, small_size=small_size, small_every=small_every,
                     slices_per_patient=13, version="7.3")
    log.info("generated %d v7.3 files in %.1f s", count, time.perf_counter() - start)
    start = time.perf_counter()
    cold = load_slices(folder, image_size=image_size, cache_dir=cache)
    cold_s = time.perf_counter() - start
    cached_s = best_time(lambda: load_slices(folder, image_size=image_size, cache_dir=cache), repeats)
    cached = load_slices(folder, image_size=image_size, cache_dir=cache)
    if cached.fingerprint != cold.fingerprint or len(cached) != count:
        raise RuntimeError("cached load differs from the cold load")
    return {"cold_s": cold_s, "cached_s": cached_s, "ratio": cold_s / cached_s}


def bench_shards(workdir: Path, num_images: int, image_size: int, shard_size: int,
                 repeats: int) -> dict[str, float]:
    """MB/s for shard write/read and numpy.save/load of the same uint8 images and int64 labels."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (num_images, image_size, image_size), dtype=np.uint8)
    labels = rng.integers(0, 3, num_images).astype(np.int64)
    megabytes = (images.nbytes + labels.nbytes) / 1e6
    shards, npy = workdir / "shards", workdir / "npy"
    npy.mkdir()

    def shard_write() -> None:
        write_shards(shards, images, labels, shard_size=shard_size, provenance={"bench": "data"})

    def clear_shards() -> None:  # each repeat writes every shard instead of resuming
        shutil.rmtree(shards, ignore_errors=True)

    def numpy_write() -> None:
        np.save(npy / "images.npy", images)
        np.save(npy / "labels.npy", labels)

    def numpy_read() -> tuple[np.ndarray, np.ndarray]:
        return np.load(npy / "images.npy"), np.load(npy / "labels.npy")

    shard_write_s = best_time(shard_write, repeats, setup=clear_shards)
    numpy_write_s = best_time(numpy_write, repeats)
    shard_read_s = best_time(lambda: read_shards(shards), repeats)
    unverified_s = best_time(lambda: read_shards(shards, verify=False), repeats)
    numpy_read_s = best_time(numpy_read, repeats)
    read_images, read_labels, _ = read_shards(shards)
    if not (np.array_equal(read_images, images) and np.array_equal(read_labels, labels)):
        raise RuntimeError("shards did not round-trip")
    return {"megabytes": megabytes, "shard_write": megabytes / shard_write_s, "numpy_write": megabytes / numpy_write_s,
            "shard_read": megabytes / shard_read_s, "numpy_read": megabytes / numpy_read_s,
            "shard_read_unverified": megabytes / unverified_s}


def main(argv: list[str] | None = None) -> None:
    """Parse flags, run both benchmarks in a temporary folder and print the result table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3064, help="generated .mat slices (release: 3064)")
    parser.add_argument("--size", type=int, default=512, help="side of most slices (release: 512)")
    parser.add_argument("--small-size", type=int, default=256, help="side of the few small slices (release: 256)")
    parser.add_argument("--small-every", type=int, default=100, help="every n-th patient has small slices")
    parser.add_argument("--image-size", type=int, default=128, help="preprocessed side (load_slices)")
    parser.add_argument("--shard-images", type=int, default=7000, help="images in the shard benchmark")
    parser.add_argument("--shard-image-size", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary folder goes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="bench_data-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        mat = bench_mat_cache(workdir, args.count, args.size, args.small_size, args.small_every, args.image_size,
                              args.repeats)
        shard = bench_shards(workdir, args.shard_images, args.shard_image_size, args.shard_size, args.repeats)
    print(f"\n(a) load_slices, {args.count} MATLAB v7.3 files at {args.size} px -> {args.image_size} px")
    print(f"    cold (parse + preprocess): {mat['cold_s']:8.2f} s")
    print(f"    from cache:                {mat['cached_s']:8.3f} s")
    print(f"    ratio cold / cached:       {mat['ratio']:8.1f} x   (goal >= 20 x)")
    print(f"\n(b) {args.shard_images} x {args.shard_image_size}^2 uint8 + int64 labels "
          f"({shard['megabytes']:.0f} MB), shards of {args.shard_size}")
    rows = [("write", shard["shard_write"], shard["numpy_write"]),
            ("read (SHA-256 verified)", shard["shard_read"], shard["numpy_read"]),
            ("read, verify=False", shard["shard_read_unverified"], shard["numpy_read"])]
    print(f"    {'':24}{'shards MB/s':>12}{'numpy MB/s':>12}{'ratio':>8}")
    for name, ours, numpy_speed in rows:
        print(f"    {name:24}{ours:>12.0f}{numpy_speed:>12.0f}{ours / numpy_speed:>7.2f}x")
    print("    goal: read ratio >= 0.5 x")


if __name__ == "__main__":
    main()
