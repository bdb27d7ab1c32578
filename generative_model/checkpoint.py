"""The generator's checkpoint files, written and read only here: ``generator.pt`` (what synthesis loads) and
the per-epoch training checkpoints ``checkpoints/epoch-NNNN.pt`` (what a resume loads). Both hold ``G`` and
``arch`` (the :func:`generative_model.networks.define_G` arguments), so either can feed synthesis."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from experiment.checkpoint import (
    CheckpointError,
    epoch_checkpoint_path,
    load_checkpoint,
    load_model_state,
    prune_checkpoints,
    save_checkpoint,
)
from generative_model.conditions import CONDITION_CHANNELS
from generative_model.networks import UnetGenerator, define_G
from generative_model.pix2pix import STATE_KEYS, Pix2Pix

GENERATOR_FILE = "generator.pt"
ARCH_KEYS = frozenset({"input_nc", "output_nc", "image_size", "ngf", "norm", "use_dropout"})
"""The keys of ``arch``: what :func:`define_G` needs to rebuild the generator."""
TRAINING_KEYS = (*STATE_KEYS, "arch", "epoch", "elapsed")
"""What an epoch checkpoint holds: the whole :class:`Pix2Pix` state, ``arch``, its epoch and the run's wall time."""


def generator_arch(net: Any, image_size: int) -> dict[str, Any]:
    """The ``arch`` of a ``net.*`` config at ``image_size`` px (the :func:`define_G` keyword arguments)."""
    return {"input_nc": CONDITION_CHANNELS, "output_nc": 1, "image_size": int(image_size), "ngf": int(net.ngf),
            "norm": str(net.norm), "use_dropout": bool(net.dropout)}


def save_generator(path: str | os.PathLike, generator: torch.nn.Module, arch: dict[str, Any], *, epoch: int,
                   fold: int | None, folds_file: str | None, data_fingerprint: str) -> None:
    """Write ``generator.pt`` (atomically): the weights, ``arch`` and which fold and data they were trained on."""
    save_checkpoint(path, {"G": generator.state_dict(), "arch": arch, "epoch": int(epoch), "fold": fold,
                           "folds_file": folds_file, "data_fingerprint": data_fingerprint})


def load_generator(path: str | os.PathLike, *, image_size: int, fold: int | None,
                   device: torch.device) -> UnetGenerator:
    """The generator stored at ``path`` (``generator.pt`` or an epoch checkpoint), checked to render
    ``image_size`` px images from this code's conditions for synthesis of ``fold``.

    Raises:
        CheckpointError: unreadable file, no generator in it, another image size, condition layout or fold,
            or weights that do not fit the recorded architecture.
    """
    state = load_checkpoint(path)
    arch = state.get("arch")
    if "G" not in state or not isinstance(arch, dict) or set(arch) != ARCH_KEYS:
        raise CheckpointError(f"checkpoint {path} holds no pix2pix generator (needs 'G' and 'arch' with "
                              f"{sorted(ARCH_KEYS)})")
    if arch["image_size"] != image_size:
        raise CheckpointError(f"checkpoint {path} renders {arch['image_size']} px images, but data.image_size="
                              f"{image_size}; synthesise at the generator's size or train one for this size")
    if arch["input_nc"] != CONDITION_CHANNELS:
        raise CheckpointError(f"checkpoint {path} expects {arch['input_nc']} condition channels, this code "
                              f"builds {CONDITION_CHANNELS}")
    if state.get("fold", fold) != fold:  # epoch checkpoints do not record the fold
        raise CheckpointError(f"checkpoint {path} was trained for fold {state['fold']}, not fold {fold}: its "
                              f"images could leak that fold's test patients into fold {fold}")
    generator = define_G(**arch)
    load_model_state(generator, state["G"], str(path))
    return generator.to(device)


def save_training_checkpoint(folder: str | os.PathLike, model: Pix2Pix, arch: dict[str, Any], *, epoch: int,
                             elapsed: float, keep: int) -> Path:
    """Write ``folder/epoch-NNNN.pt`` (atomically), keep the ``keep`` newest epoch checkpoints; return the path."""
    path = epoch_checkpoint_path(folder, epoch)
    save_checkpoint(path, {**model.state_dict(), "arch": arch, "epoch": int(epoch), "elapsed": float(elapsed)})
    prune_checkpoints(folder, keep=keep)
    return path


def load_training_checkpoint(path: str | os.PathLike, model: Pix2Pix, arch: dict[str, Any]) -> tuple[int, float]:
    """Restore ``model`` from the epoch checkpoint ``path``; return its epoch and the run's elapsed seconds.

    Raises:
        CheckpointError: unreadable file, not a pix2pix training checkpoint, another ``arch`` than this
            config's, or weights that do not fit.
    """
    state = load_checkpoint(path)
    missing = [key for key in TRAINING_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}: not a pix2pix training checkpoint")
    if state["arch"] != arch:
        raise CheckpointError(f"checkpoint {path} was trained with generator {state['arch']}, but this config "
                              f"asks for {arch}; use another run_dir= or the original settings")
    model.load_state_dict(state, source=str(path))
    return int(state["epoch"]), float(state["elapsed"])
