"""Classify slices with a trained classifier (``model.pt``) or its ONNX export.

    python capsule_classifier/predict.py MODEL INPUT [INPUT ...] [--json]

``MODEL`` is a ``model.pt`` from ``capsule_classifier/train.py`` or an ``.onnx`` file from
``capsule_classifier/export.py``. Each ``INPUT`` is a figshare ``.mat`` file, a ``.png``/``.jpg``
image (converted to grey), a 2-D ``.npy`` array, or a folder of those. Every slice goes through
exactly the training preprocessing (``datasets.transforms.preprocess_slice`` at the model's image size).
Prints one row of class probabilities per slice, or JSON with ``--json``.
"""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from capsule_classifier.data import to_input
from capsule_classifier.export import INPUT_NAME, OUTPUT_NAME
from datasets.core import DataError
from datasets.transforms import preprocess_slice

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SUFFIXES = (".mat", ".npy", *IMAGE_SUFFIXES)


class ModelInputError(ValueError):
    """An ONNX model whose input or metadata does not match a classifier export."""


def read_slice(path: str | os.PathLike) -> np.ndarray:
    """The raw 2-D slice stored in ``path`` (.mat, .npy, .png, .jpg).

    Raises:
        DataError: unsupported suffix, unreadable file, or content that is not a 2-D image.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported input type {suffix!r}; expected one of {SUFFIXES}")
    if suffix == ".mat":
        from datasets.matlab import read_mat_slice

        return read_mat_slice(path).image
    try:
        if suffix == ".npy":
            image = np.load(path, allow_pickle=False)
        else:
            from PIL import Image

            with Image.open(path) as handle:
                image = np.asarray(handle.convert("L"))
    except Exception as error:
        raise DataError(f"{path}: cannot read it as {suffix} ({error})") from error
    if image.ndim != 2 or min(image.shape) < 2:
        raise DataError(f"{path}: expected a 2-D image, got an array of shape {image.shape}")
    if not np.issubdtype(image.dtype, np.number):
        raise DataError(f"{path}: expected numeric pixels, got dtype {image.dtype}")
    return image


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named by ``inputs``; folders contribute their supported files in sorted order."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file()))
        elif item.exists():
            found.append(item)
        else:
            raise DataError(f"input does not exist: {item}")
    if not found:
        raise DataError(f"no .mat, .npy, .png or .jpg slices found in {[str(i) for i in inputs]}")
    return found


class Predictor:
    """Class probabilities from a ``model.pt`` checkpoint or an ONNX export; ``image_size`` and
    ``class_names`` come from the checkpoint or the ONNX metadata."""

    def __init__(self, model_path: str | os.PathLike) -> None:
        self.path = Path(model_path)
        if self.path.suffix.lower() == ".onnx":
            self._init_onnx()
        else:
            from capsule_classifier.deploy import load_classifier

            self.classifier, meta = load_classifier(self.path)
            self.session = None
            self.image_size, self.class_names = int(meta["image_size"]), list(meta["class_names"])

    def _init_onnx(self) -> None:
        import onnxruntime

        if not self.path.is_file():
            raise ModelInputError(f"ONNX model not found: {self.path}")
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as error:
            raise ModelInputError(f"{self.path} is not a loadable ONNX model: {error}") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        inputs = self.session.get_inputs()
        if "image_size" not in metadata or "class_names" not in metadata:
            raise ModelInputError(f"{self.path} lacks image_size/class_names metadata; export it with "
                                  "capsule_classifier/export.py")
        self.image_size, self.class_names = int(metadata["image_size"]), json.loads(metadata["class_names"])
        shape = inputs[0].shape if len(inputs) == 1 else None
        expected = [1, self.image_size, self.image_size]
        if inputs[0].name != INPUT_NAME or shape is None or len(shape) != 4 or list(shape[1:]) != expected:
            raise ModelInputError(f"{self.path}: input {[(i.name, i.shape) for i in inputs]} does not match the "
                                  f"classifier input {INPUT_NAME!r} (batch, {', '.join(map(str, expected))})")
        self.classifier = None

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """The training preprocessing of one raw slice -> uint8 (S, S)."""
        return preprocess_slice(image, self.image_size)

    def probabilities(self, slices: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) of preprocessed uint8 slices (N, S, S)."""
        batch = to_input(slices)
        if self.session is not None:
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]
        with torch.no_grad():
            return self.classifier(batch).numpy()

    def predict_files(self, paths: Sequence[Path]) -> list[dict[str, Any]]:
        """One record per file: path, predicted class and class probabilities."""
        slices = np.stack([self.preprocess(read_slice(path)) for path in paths])
        records = []
        for path, row in zip(paths, self.probabilities(slices), strict=True):
            records.append({"path": str(path), "prediction": self.class_names[int(row.argmax())],
                            "probabilities": {name: round(float(p), 6) for name, p in
                                              zip(self.class_names, row, strict=True)}})
        return records


def format_table(records: Sequence[dict[str, Any]], class_names: Sequence[str]) -> str:
    """A plain-text table: file, prediction and one probability column per class."""
    width = max(len("file"), *(len(Path(r["path"]).name) for r in records))
    lines = [f"{'file':<{width}}  {'prediction':<12}" + "".join(f"{name:>12}" for name in class_names)]
    for record in records:
        cells = "".join(f"{record['probabilities'][name]:>12.4f}" for name in class_names)
        lines.append(f"{Path(record['path']).name:<{width}}  {record['prediction']:<12}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model.pt or model.onnx")
    parser.add_argument("inputs", nargs="+", help=".mat, .npy, .png, .jpg files or folders of them")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    predictor = Predictor(args.model)
    records = predictor.predict_files(collect_inputs(args.inputs))
    if args.json:
        print(json.dumps({"model": str(args.model), "class_names": predictor.class_names, "predictions": records},
                         indent=2))
    else:
        print(format_table(records, predictor.class_names))


if __name__ == "__main__":
    main()
