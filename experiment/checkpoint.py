"""Atomic checkpoints loaded with ``weights_only=True``; the newest complete one wins on resume."""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import torch

from experiment.atomic import atomic_write_bytes
from experiment.errors import UserError

_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.pt$")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, unreadable or does not match the model it is loaded into."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Serialise ``state`` (tensors, state dicts, numbers, strings) to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); raise :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types; its advice to drop weights_only is not repeated
        raise CheckpointError(f"checkpoint {path} is corrupt, or holds objects other than tensors and plain data "
                              f"({type(error).__name__}); it is not loaded") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds {type(state).__name__}, expected a dict")
    return state


def load_model_state(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load weights strictly; a shape or key mismatch raises :class:`CheckpointError` naming ``source``."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {source} does not match this {type(model).__name__} "
            f"(different architecture or image size?): {str(error).splitlines()[0]}"
        ) from error


def epoch_checkpoint_path(folder: str | os.PathLike, epoch: int) -> Path:
    """``folder/epoch-0007.pt``."""
    return Path(folder) / f"epoch-{epoch:04d}.pt"


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The epoch checkpoint with the highest epoch number in ``folder``, or ``None``."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), folder / name) for name in os.listdir(folder) if (m := _EPOCH_FILE.match(name))]
    return max(found)[1] if found else None


def prune_checkpoints(folder: str | os.PathLike, keep: int = 2) -> None:
    """Delete all but the ``keep`` newest epoch checkpoints (best/final files are not touched)."""
    folder = Path(folder)
    found = sorted(int(m.group(1)) for name in os.listdir(folder) if (m := _EPOCH_FILE.match(name)))
    for epoch in found[:-keep] if keep > 0 else found:
        epoch_checkpoint_path(folder, epoch).unlink(missing_ok=True)
