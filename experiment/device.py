"""Device choice and mixed precision: CUDA with float16 AMP when present, else CPU in float32 (or bfloat16
autocast on request, which pays off on CPUs with AMX or AVX512-BF16)."""
from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

from experiment.errors import ConfigError


def select_device(name: str = "auto") -> torch.device:
    """Resolve ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        ConfigError: another name, or a CUDA device this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from error
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r} is not supported; use auto, cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if device.type == "cuda" and torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= count:
        raise ConfigError(f"device={name!r} requested but this machine has {count} usable CUDA device(s)")
    return device


def autocast(device: torch.device, enabled: bool = True, cpu_bf16: bool = False) -> AbstractContextManager:
    """Mixed-precision context: float16 autocast on CUDA when ``enabled``; on the CPU bfloat16 autocast when
    ``cpu_bf16`` (no gradient scaling needed: bfloat16 has float32's range), else a no-op."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    if cpu_bf16 and device.type == "cpu":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, enabled: bool = True) -> torch.amp.GradScaler:
    """A gradient scaler that is active only for CUDA AMP."""
    return torch.amp.GradScaler("cuda", enabled=enabled and device.type == "cuda")


def describe(device: torch.device) -> dict:
    """What the run summary records about the device."""
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
