"""Export a trained classifier (``model.pt``) to ONNX and check it against PyTorch.

    python capsule_classifier/export.py runs/classifier/capsnet/grouped-k7/scratch/fold0/model.pt [--out model.onnx]

The ONNX graph (opset 17, TorchScript exporter) maps float32 ``image`` ``(batch, 1, S, S)`` with
intensities in [0, 1] (the training preprocessing in the model's geometry, uint8 / 255) to ``probabilities``
``(batch, C)``, calibrated with the checkpoint's temperature, and, when the checkpoint has an out-of-scope
detector, to ``out_of_scope_score`` ``(batch,)``; the batch axis is dynamic. Model name, image size, class
names, slice geometry, the temperature and the out-of-scope threshold travel in the ONNX metadata. The export is
checked with onnxruntime on real slices of the embedded sample: the largest absolute probability difference
must stay below ``--tolerance`` (1e-4), and the largest relative score difference below
:data:`SCORE_TOLERANCE`, else the file is not kept. An expected error (a bad checkpoint, a failed parity check)
ends with one line and exit code 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from capsule_classifier.data import to_input
from capsule_classifier.deploy import ProbabilityModel, load_classifier
from datasets.slices import load_slices
from experiment.atomic import atomic_write_bytes
from experiment.cli import reports_user_errors, strip_debug_flag
from experiment.errors import UserError

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME, OUTPUT_NAME, SCORE_NAME = "image", "probabilities", "out_of_scope_score"
TOLERANCE = 1e-4
SCORE_TOLERANCE = 1e-3
THRESHOLD_KEY = "out_of_scope_threshold"


class ExportError(UserError, RuntimeError):
    """The ONNX model disagrees with PyTorch beyond the tolerance (the message names the checkpoint)."""


def sample_slices(image_size: int, count: int = 16) -> np.ndarray:
    """``count`` real slices of the embedded sample, spread over the set, preprocessed at ``image_size``."""
    data = load_slices(None, image_size)
    index = np.linspace(0, len(data) - 1, num=min(count, len(data))).round().astype(int)
    return data.images[index]


class _Graph(nn.Module):
    """What the ONNX graph computes: probabilities, and the out-of-scope score when there is a detector."""

    def __init__(self, classifier: ProbabilityModel) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        probabilities, score = self.classifier.scored(images)
        return probabilities if score is None else (probabilities, score)


def to_onnx_bytes(classifier: ProbabilityModel, image_size: int, opset: int = OPSET,
                  metadata: dict[str, str] | None = None) -> bytes:
    """Serialise ``classifier`` as an ONNX model with a dynamic batch axis and string ``metadata``."""
    buffer = io.BytesIO()
    example = torch.zeros(2, 1, image_size, image_size)
    outputs = [OUTPUT_NAME] + ([SCORE_NAME] if classifier.detector is not None else [])
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(_Graph(classifier).eval(), (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=outputs,
                          dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]})
    model = onnx.load_from_string(buffer.getvalue())
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def onnx_probabilities(model_bytes: bytes | str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """Run an ONNX classifier with onnxruntime (CPU) on uint8 slices ``(N, S, S)``: its probabilities."""
    return onnx_outputs(model_bytes, images)[0]


def onnx_outputs(model_bytes: bytes | str | os.PathLike, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities and out-of-scope scores (None when the graph has none) of an ONNX classifier."""
    import onnxruntime

    source = model_bytes if isinstance(model_bytes, bytes) else str(model_bytes)
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    results = session.run(names, {INPUT_NAME: to_input(images).numpy()})
    return results[0], results[1] if SCORE_NAME in names else None


def export(checkpoint: str | os.PathLike, out: str | os.PathLike, opset: int = OPSET,
           tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out`` after checking parity; return the export report.

    Raises:
        CheckpointError: a missing, corrupt or non-classifier checkpoint.
        ModelInputError: a checkpoint whose metadata or builder arguments are not usable.
        ExportError: ONNX and PyTorch probabilities differ by ``tolerance`` or more, or out-of-scope scores by
            :data:`SCORE_TOLERANCE` (relative) or more.
    """
    classifier, meta = load_classifier(checkpoint)
    size = int(meta["image_size"])
    metadata = {"model_name": meta["model_name"], "image_size": str(size),
                "class_names": json.dumps(meta["class_names"]), "opset": str(opset),
                "input": f"float32 (batch, 1, {size}, {size}), uint8 slice / 255 after preprocess_slice",
                "temperature": repr(float(classifier.temperature)), "geometry": meta["geometry"]}
    if classifier.detector is not None:
        metadata[THRESHOLD_KEY] = repr(classifier.detector.threshold)
    payload = to_onnx_bytes(classifier, size, opset, metadata)
    images = sample_slices(size)
    with torch.no_grad():
        expected, expected_score = classifier.scored(to_input(images))
    probabilities, score = onnx_outputs(payload, images)
    difference = float(np.abs(probabilities - expected.numpy()).max())
    score_difference = 0.0 if score is None else float(
        (np.abs(score - expected_score.numpy()) / np.maximum(np.abs(expected_score.numpy()), 1.0)).max())
    report = {"checkpoint": str(checkpoint), "onnx": str(out), "opset": opset, "image_size": size,
              "model_name": meta["model_name"], "class_names": meta["class_names"], "parity_slices": len(images),
              "max_abs_probability_difference": difference, "tolerance": tolerance,
              "temperature": float(classifier.temperature), "out_of_scope_score": score is not None,
              "max_relative_score_difference": score_difference}
    if not (difference < tolerance and score_difference < SCORE_TOLERANCE):
        raise ExportError(f"ONNX export of {checkpoint} differs from PyTorch by {difference:.3g} in probabilities "
                          f"(tolerance {tolerance:g}) and {score_difference:.3g} in relative out-of-scope score "
                          f"(tolerance {SCORE_TOLERANCE:g}) on {len(images)} sample slices; not written")
    atomic_write_bytes(out, payload)
    log.info("wrote %s (opset %d); max |p_onnx - p_torch| = %.2e on %d sample slices", out, opset, difference,
             len(images))
    return report


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="model.pt written by capsule_classifier/train.py")
    parser.add_argument("--out", type=Path, help="ONNX file (default: model.onnx beside the checkpoint)")
    parser.add_argument("--opset", type=int, default=OPSET)
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    args = parser.parse_args(strip_debug_flag(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = export(args.checkpoint, args.out or args.checkpoint.with_suffix(".onnx"), args.opset, args.tolerance)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
