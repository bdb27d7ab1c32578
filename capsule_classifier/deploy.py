"""The deployable classifier checkpoint (``model.pt``) and a probabilities head for export and prediction.

``model.pt`` holds the selected weights plus everything needed to rebuild and feed the model: model name and
builder arguments, image size, class names and the slice ``geometry`` it was trained with
(:data:`datasets.transforms.GEOMETRIES`; ``canonical`` when the file does not say); once
``capsule_classifier/trust.py`` has run on its fold, also ``calibration`` (the temperature,
:mod:`capsule_classifier.calibration`) and ``out_of_scope`` (the detector, :mod:`capsule_classifier.out_of_scope`).
It is loaded with ``weights_only=True``, and its metadata is checked before anything is built: a supported image
size, a list of class names, a known geometry, builder arguments that are plain numbers, a positive temperature,
detector tensors of consistent shapes. A model file carries its weights: builder arguments that only initialise
weights from another file (``ModelEntry.init_only_kwargs``) are dropped, never followed.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from capsule_classifier import build_model, build_objective, model_entry
from capsule_classifier.activations import captured
from capsule_classifier.calibration import calibrate
from capsule_classifier.out_of_scope import OutOfScopeDetector
from datasets.core import IMAGE_SIZES, check_allocation
from datasets.transforms import GEOMETRIES
from experiment.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from experiment.errors import UserError

if TYPE_CHECKING:
    from experiment.engine import Objective

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("model", "model_name", "model_kwargs", "image_size", "class_names")
MAX_CLASSES = 1000
MAX_KWARG_ITEMS = 16
"""The most items a list-valued builder argument of a saved model may hold."""
DEFAULT_MODEL = Path("models/capsnet-figshare.onnx")
"""The released model (``capsule_classifier/release.py``), relative to the repository root: what ``predict.py`` and
``evaluate.py`` use when given no model, unless ``$BRAIN_TUMOUR_MODEL`` names another (:func:`default_model`)."""
MODEL_ENV = "BRAIN_TUMOUR_MODEL"


class ModelInputError(UserError, ValueError):
    """A model file whose metadata or input does not match a classifier export (the message names the file)."""


def check_image_size(value: Any, source: str | os.PathLike) -> int:
    """``value`` (an int, or its decimal text in ONNX metadata) as one of :data:`datasets.core.IMAGE_SIZES`."""
    if isinstance(value, str) and value.isascii() and value.isdecimal() and len(value) <= 6:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value not in IMAGE_SIZES:
        raise ModelInputError(f"{source}: image_size {value!r} is not one of the supported sizes {IMAGE_SIZES}")
    return value


def check_geometry(value: Any, source: str | os.PathLike) -> str:
    """``value`` as one of :data:`datasets.transforms.GEOMETRIES`."""
    if value not in GEOMETRIES:
        raise ModelInputError(f"{source}: geometry {str(value)[:40]!r} is not one of {GEOMETRIES}")
    return value


def check_class_names(value: Any, source: str | os.PathLike) -> list[str]:
    """``value`` as a list of 2 to :data:`MAX_CLASSES` distinct, non-empty class names."""
    if (not isinstance(value, (list, tuple)) or not 2 <= len(value) <= MAX_CLASSES
            or not all(isinstance(name, str) and name.strip() for name in value) or len(set(value)) != len(value)):
        raise ModelInputError(f"{source}: class_names must be a list of 2 to {MAX_CLASSES} distinct names, "
                              f"got {str(value)[:60]}")
    return list(value)


def default_model() -> Path:
    """``$BRAIN_TUMOUR_MODEL`` when set, else :data:`DEFAULT_MODEL` under the repository root (whatever the cwd)."""
    return Path(os.environ.get(MODEL_ENV) or Path(__file__).resolve().parents[1] / DEFAULT_MODEL)


class ProbabilityModel(nn.Module):
    """``model`` followed by its objective's class probabilities, calibrated with ``temperature``:
    (N, 1, S, S) -> (N, C); :meth:`scored` also gives the out-of-scope score of ``detector``."""

    def __init__(self, model: nn.Module, objective: Objective, temperature: float = 1.0,
                 detector: OutOfScopeDetector | None = None) -> None:
        super().__init__()
        self.model, self.objective, self.detector = model, objective, detector
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scored(images)[0]

    def scored(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Calibrated probabilities (N, C) and the out-of-scope score (N,), or None without a detector."""
        with captured(self.model, self.detector.layers if self.detector is not None else ()) as activations:
            output = self.model(images)
        probabilities = calibrate(self.objective.probabilities(self.objective.scores(output)), self.temperature)
        return probabilities, None if self.detector is None else self.detector(activations)


def save_classifier(path: str | os.PathLike, model: nn.Module, model_name: str, model_kwargs: dict[str, Any],
                    image_size: int, class_names: Sequence[str], **extra: Any) -> None:
    """Write the deployable checkpoint (atomically); ``extra`` holds plain provenance (fold, epoch, ...)."""
    save_checkpoint(path, {"model": model.state_dict(), "model_name": model_name, "model_kwargs": dict(model_kwargs),
                           "image_size": int(image_size), "class_names": list(class_names), **extra})


def update_classifier(path: str | os.PathLike, **fields: Any) -> None:
    """Add or replace metadata ``fields`` (``calibration``, ``out_of_scope``) of the checkpoint at ``path``."""
    save_checkpoint(path, {**load_checkpoint(path), **fields})


def load_classifier(path: str | os.PathLike) -> tuple[ProbabilityModel, dict[str, Any]]:
    """Rebuild the classifier saved at ``path`` in eval mode, calibrated and with its out-of-scope detector when
    the file has them; return it with its metadata.

    Raises:
        CheckpointError: missing or corrupt file, a checkpoint that is not a classifier, or mismatched weights.
        ModelInputError: an unsupported image size, bad class names, an unknown model, builder arguments
            that are not plain numbers or that the model does not take, a temperature that is not a positive
            number, or an out-of-scope detector that does not fit the model.
    """
    state = load_checkpoint(path)
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a classifier checkpoint (model.pt from capsule_classifier/train.py): "
                              f"it lacks {missing}")
    meta = {key: value for key, value in state.items() if key != "model"}
    meta["image_size"] = check_image_size(state["image_size"], path)
    meta["class_names"] = check_class_names(state["class_names"], path)
    meta["geometry"] = check_geometry(state.get("geometry", GEOMETRIES[0]), path)
    meta["model_kwargs"] = _builder_kwargs(path, state["model_name"], state["model_kwargs"])
    arguments = {"num_classes": len(meta["class_names"]), "image_size": meta["image_size"], **meta["model_kwargs"]}
    try:
        with torch.device("meta"):  # the size of the model, before any memory is allocated
            size = sum(p.numel() * p.element_size() for p in build_model(state["model_name"], **arguments).parameters())
    except (TypeError, ValueError) as error:
        raise ModelInputError(f"{path}: cannot rebuild model {state['model_name']!r}: {error}") from error
    check_allocation(size, f"{path}: model {state['model_name']!r}")
    model = build_model(state["model_name"], **arguments)
    load_model_state(model, state["model"], str(path))
    temperature = _temperature(path, state.get("calibration"))
    detector = _detector(path, state.get("out_of_scope"), model, len(meta["class_names"]))
    classifier = ProbabilityModel(model, build_objective(state["model_name"]), temperature, detector).eval()
    if detector is not None:
        try:
            with torch.no_grad():
                classifier.scored(torch.zeros(1, 1, meta["image_size"], meta["image_size"]))
        except RuntimeError as error:
            raise ModelInputError(f"{path}: the out-of-scope detector does not fit the model's features: "
                                  f"{str(error).splitlines()[0]}") from error
    return classifier, meta


def _temperature(path: str | os.PathLike, calibration: Any) -> float:
    """The calibration temperature of a saved model (1: none)."""
    if calibration is None:
        return 1.0
    value = calibration.get("temperature") if isinstance(calibration, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ModelInputError(f"{path}: calibration.temperature must be a positive number, got {str(value)[:40]}")
    return float(value)


def _detector(path: str | os.PathLike, meta: Any, model: nn.Module, num_classes: int) -> OutOfScopeDetector | None:
    """The out-of-scope detector of a saved model (None: none), reading layers the model has."""
    if meta is None:
        return None
    try:
        detector = OutOfScopeDetector.from_metadata(meta, num_classes)
    except ValueError as error:
        raise ModelInputError(f"{path}: {error}") from error
    unknown = sorted(set(detector.layers) - {name for name, _ in model.named_modules()})
    if unknown:
        raise ModelInputError(f"{path}: out_of_scope.layers {unknown} are not modules of the model")
    return detector


def _builder_kwargs(path: str | os.PathLike, name: Any, kwargs: Any) -> dict[str, Any]:
    """The builder arguments of a saved model: plain numbers, booleans or short lists of numbers;
    weight-initialising ones dropped."""
    try:
        init_only = model_entry(name).init_only_kwargs
    except (TypeError, ValueError) as error:
        raise ModelInputError(f"{path}: {error}") from error
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        raise ModelInputError(f"{path}: model_kwargs must be a dict of named arguments, got {str(kwargs)[:60]}")
    dropped = sorted(key for key in kwargs if key in init_only and kwargs[key] is not None)
    if dropped:
        log.warning("%s: ignoring %s: a model file carries its weights; paths inside it are not followed",
                    path, {key: kwargs[key] for key in dropped})
    kept = {key: value for key, value in kwargs.items() if key not in init_only}
    for key, value in kept.items():
        if not (_plain(value) or (isinstance(value, (list, tuple)) and len(value) <= MAX_KWARG_ITEMS
                                  and all(_plain(item) for item in value))):
            raise ModelInputError(f"{path}: model_kwargs must be numbers, booleans, null or short lists of "
                                  f"numbers; {key} is {str(value)[:40]!r}")
    return {key: list(value) if isinstance(value, tuple) else value for key, value in kept.items()}


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float))
