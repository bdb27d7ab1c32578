"""DistributedDataParallel plumbing for ``torchrun``: gloo on the CPU, nccl on CUDA, same code path.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything degrades to one process.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device: torch.device) -> bool:
    """Join the process group that ``torchrun`` describes; return whether the run is distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return True


def setup_device(name: str = "auto") -> tuple[torch.device, bool]:
    """Resolve ``name`` (see :func:`experiment.device.select_device`), join a ``torchrun`` process group when
    there is one, and return this process's device and whether the run is distributed."""
    from experiment.device import select_device

    device = select_device(name)
    distributed = init_distributed(device)
    return local_device(device), distributed


def is_distributed() -> bool:
    """Whether a process group is active."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 writes checkpoints, metrics and summaries; the others only train."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """On CUDA, the GPU of this process's ``LOCAL_RANK``; on the CPU, the CPU."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group."""
    if is_distributed():
        dist.destroy_process_group()
