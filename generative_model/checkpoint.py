"""The generator's checkpoint files, written and read only here: ``generator.pt`` (what synthesis loads) and
the per-epoch training checkpoints ``checkpoints/epoch-NNNN.pt`` (what a resume loads). Both hold ``G`` and
``arch`` (what :func:`build_generator` needs: the network, its crop size, the slice size and the hole's
dilation radius it was trained for), so either can feed synthesis."""
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
from generative_model.conditions import CONDITION_CHANNELS, scaled
from generative_model.networks import IMAGE_SIZES, UnetGenerator, define_G
from generative_model.pix2pix import STATE_KEYS, Pix2Pix

GENERATOR_FILE = "generator.pt"
ARCH_KEYS = frozenset({"input_nc", "output_nc", "crop_size", "slice_size", "erase_radius", "ngf", "norm",
                       "use_dropout"})
"""The keys of ``arch``: what :func:`build_generator` needs, plus the slice size and erase radius (pixels at
that size) of the conditions it was trained on."""
MAX_NGF = 256
"""The widest generator a checkpoint may ask for (its innermost levels have ``8 * ngf`` channels)."""
TRAINING_KEYS = (*STATE_KEYS, "arch", "epoch", "elapsed")
"""What an epoch checkpoint holds: the whole :class:`Pix2Pix` state, ``arch``, its epoch and the run's wall time."""


def generator_arch(net: Any, condition: Any, image_size: int) -> dict[str, Any]:
    """The ``arch`` of ``net.*`` and ``condition.*`` configs for ``image_size`` px slices."""
    return {"input_nc": CONDITION_CHANNELS, "output_nc": 1, "crop_size": int(condition.crop_size),
            "slice_size": int(image_size), "erase_radius": float(scaled(condition.erase_radius, image_size)),
            "ngf": int(net.ngf), "norm": str(net.norm), "use_dropout": bool(net.dropout)}


def build_generator(arch: dict[str, Any], **init: Any) -> UnetGenerator:
    """The U-Net of ``arch`` for ``crop_size`` px crops (``init``: :func:`define_G`'s ``init_type``/``init_gain``)."""
    return define_G(input_nc=arch["input_nc"], output_nc=arch["output_nc"], image_size=arch["crop_size"],
                    ngf=arch["ngf"], norm=arch["norm"], use_dropout=arch["use_dropout"], **init)


def save_generator(path: str | os.PathLike, generator: torch.nn.Module, arch: dict[str, Any], *, epoch: int,
                   fold: int | None, folds_file: str | None, data_fingerprint: str) -> None:
    """Write ``generator.pt`` (atomically): the weights, ``arch`` and which fold and data they were trained on."""
    save_checkpoint(path, {"G": generator.state_dict(), "arch": arch, "epoch": int(epoch), "fold": fold,
                           "folds_file": folds_file, "data_fingerprint": data_fingerprint})


def load_generator(path: str | os.PathLike, *, image_size: int, fold: int | None,
                   device: torch.device) -> tuple[UnetGenerator, dict[str, Any]]:
    """The generator stored at ``path`` (``generator.pt`` or an epoch checkpoint) and its ``arch``, checked to
    paint ``image_size`` px slices from this code's conditions for synthesis of ``fold``.

    Raises:
        CheckpointError: unreadable file, no generator in it, architecture numbers out of range (checked before
            anything is built), another image size or fold, or weights that do not fit the recorded architecture.
    """
    state = load_checkpoint(path)
    arch = state.get("arch")
    if "G" not in state or not isinstance(arch, dict) or set(arch) != ARCH_KEYS:
        raise CheckpointError(f"checkpoint {path} holds no pix2pix generator (needs 'G' and 'arch' with "
                              f"{sorted(ARCH_KEYS)})")
    _check_arch(path, arch)
    if arch["slice_size"] != image_size:
        raise CheckpointError(f"checkpoint {path} paints {arch['slice_size']} px slices, but data.image_size="
                              f"{image_size}; synthesise at the generator's size or train one for this size")
    if state.get("fold", fold) != fold:  # epoch checkpoints do not record the fold
        raise CheckpointError(f"checkpoint {path} was trained for fold {state['fold']}, not fold {fold}: its "
                              f"images could leak that fold's test patients into fold {fold}")
    try:
        generator = build_generator(arch)
    except ValueError as error:  # an unknown norm layer
        raise CheckpointError(f"checkpoint {path}: {error}") from error
    load_model_state(generator, state["G"], str(path))
    return generator.to(device), arch


def _check_arch(path: str | os.PathLike, arch: dict[str, Any]) -> None:
    """Refuse an ``arch`` read from ``path`` whose numbers are out of range, before anything is built (a crafted
    file could otherwise ask for any amount of memory).

    Raises:
        CheckpointError: names the file, the key, its value and the range.
    """
    slice_size = arch["slice_size"] if _number(arch["slice_size"], 1, max(IMAGE_SIZES), integer=True) else 0
    rules = {"input_nc": (arch["input_nc"] == CONDITION_CHANNELS, f"{CONDITION_CHANNELS} (this code's condition "
                                                                   "channels)"),
             "output_nc": (arch["output_nc"] == 1, "1"),
             "slice_size": (slice_size in IMAGE_SIZES, f"one of {IMAGE_SIZES}"),
             "crop_size": (_number(arch["crop_size"], 1, slice_size, integer=True) and arch["crop_size"] in IMAGE_SIZES,
                           f"one of {IMAGE_SIZES}, at most slice_size"),
             "ngf": (_number(arch["ngf"], 1, MAX_NGF, integer=True), f"an integer in 1..{MAX_NGF}"),
             "erase_radius": (_number(arch["erase_radius"], 0, slice_size), "a number in 0..slice_size"),
             "norm": (isinstance(arch["norm"], str), "a norm layer's name"),
             "use_dropout": (isinstance(arch["use_dropout"], bool), "true or false")}
    for key, (ok, what) in rules.items():
        if not ok:
            raise CheckpointError(f"checkpoint {path}: arch {key}={arch[key]!r} must be {what}")


def _number(value: Any, low: float, high: float, integer: bool = False) -> bool:
    """Whether ``value`` is a number (an integer if ``integer``; never a bool) in ``low..high``."""
    kinds = int if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool) and low <= value <= high


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
    saved_head = any(key.startswith("class_head.") for key in state["D"])
    if saved_head != (model.netD.class_head is not None):
        raise CheckpointError(f"checkpoint {path} was trained {'with' if saved_head else 'without'} the class "
                              f"objective; resume with loss.lambda_cls{' > 0' if saved_head else '=0'} as it was "
                              f"trained, or use another run_dir=")
    model.load_state_dict(state, source=str(path))
    return int(state["epoch"]), float(state["elapsed"])
