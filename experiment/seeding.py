"""Seeding for python, numpy and torch, and per-epoch reseeding that makes resume exact.

Every source of randomness in an epoch derives from ``(seed, epoch)``, so a run resumed at
epoch ``e`` draws the same numbers as an uninterrupted run would have.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived deterministically from ``seed`` and integer ``keys``."""
    sequence = np.random.SeedSequence([int(seed), *[int(k) for k in keys]])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def seed_everything(seed: int, *keys: int) -> int:
    """Seed python, numpy and torch (CPU and CUDA) from ``seed`` and ``keys``; return the seed used."""
    value = derive_seed(seed, *keys)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    return value


def torch_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``seed`` and ``keys`` (for samplers and loaders)."""
    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, *keys))
    return generator


def seed_worker(worker_id: int) -> None:
    """``DataLoader`` ``worker_init_fn``: seed numpy and python from the worker's torch seed."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
