"""Classify slices with a trained classifier (``model.pt``) or its ONNX export.

    python capsule_classifier/predict.py MODEL INPUT [INPUT ...] [--out FILE.csv|FILE.json] [--json] [--strict]

``MODEL`` is a ``model.pt`` from ``capsule_classifier/train.py`` or an ``.onnx`` file from
``capsule_classifier/export.py``. Each ``INPUT`` is a slice file (figshare ``.mat``, whatever its name;
``.png``/``.jpg``, converted to grey; a 2-D ``.npy`` array) or a folder, searched recursively; paths are shown
relative to the folder. Every slice goes through exactly the training preprocessing
(``datasets.transforms.preprocess_slice`` at the model's image size).

Files that are not slices (another suffix, ``cvind.mat``) are skipped with a warning; a file that cannot be
read is reported and the others are still predicted; a tiny or constant image is predicted with a warning.
Prints a table (or JSON with ``--json``); ``--out`` also writes every row as CSV or JSON (by its suffix).
Exit code 2 when nothing could be predicted, or with ``--strict`` when any file failed; ``--debug`` shows the
traceback of an error.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from capsule_classifier.data import to_input
from capsule_classifier.deploy import ModelInputError, check_class_names, check_image_size
from capsule_classifier.export import INPUT_NAME, OUTPUT_NAME
from datasets.core import DataError, check_allocation
from datasets.transforms import preprocess_slice
from datasets.user_slices import InputFile, find_slices, read_slice
from experiment.atomic import atomic_write_json, atomic_write_text
from experiment.cli import reports_user_errors, strip_debug_flag
from experiment.progress import progress

log = logging.getLogger(__name__)

BATCH = 64
OUT_SUFFIXES = (".csv", ".json")


class Predictor:
    """Class probabilities from a ``model.pt`` checkpoint or an ONNX export; ``image_size`` and
    ``class_names`` come from the checkpoint or the ONNX metadata, checked before anything is built."""

    def __init__(self, model_path: str | os.PathLike) -> None:
        self.path = Path(model_path)
        if self.path.suffix.lower() == ".onnx":
            self._init_onnx()
        else:
            from capsule_classifier.deploy import load_classifier

            self.classifier, meta = load_classifier(self.path)
            self.session = None
            self.image_size, self.class_names = meta["image_size"], meta["class_names"]

    def _init_onnx(self) -> None:
        import onnx
        import onnxruntime

        if not self.path.is_file():
            raise ModelInputError(f"ONNX model not found: {self.path}")
        check_allocation(self.path.stat().st_size, f"{self.path}: ONNX model")
        payload = self.path.read_bytes()
        try:
            model = onnx.load_from_string(payload)
        except Exception as error:  # protobuf raises DecodeError and others for foreign files
            raise ModelInputError(f"{self.path} is not an ONNX model ({type(error).__name__})") from error
        if any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in _tensors(model.graph)):
            raise ModelInputError(f"{self.path} keeps weights in other files; a model file must carry its weights")
        metadata = {prop.key: prop.value for prop in model.metadata_props}
        if "image_size" not in metadata or "class_names" not in metadata:
            raise ModelInputError(f"{self.path} lacks image_size/class_names metadata; export it with "
                                  "capsule_classifier/export.py")
        self.image_size = check_image_size(metadata["image_size"], self.path)
        try:
            self.class_names = check_class_names(json.loads(metadata["class_names"]), self.path)
        except json.JSONDecodeError:
            raise ModelInputError(f"{self.path}: class_names metadata is not JSON ({metadata['class_names'][:40]!r})") \
                from None
        try:  # from bytes: nothing the file names is opened
            self.session = onnxruntime.InferenceSession(payload, providers=["CPUExecutionProvider"])
        except Exception as error:
            raise ModelInputError(f"{self.path} is not a loadable ONNX model: {error}") from error
        inputs, outputs = self.session.get_inputs(), [o.name for o in self.session.get_outputs()]
        expected = [1, self.image_size, self.image_size]
        shape = inputs[0].shape if len(inputs) == 1 else None
        if (inputs[0].name != INPUT_NAME or shape is None or len(shape) != 4 or list(shape[1:]) != expected
                or OUTPUT_NAME not in outputs):
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

    def predict_files(self, files: Sequence[InputFile], show_progress: bool = False) -> list[dict[str, Any]]:
        """One record per file, in order: ``path`` (its shown name), ``prediction`` and ``probabilities``, with
        ``warnings`` for degenerate images; or ``error`` when the file could not be read (the others go on)."""
        records: list[dict[str, Any]] = []
        pending: list[tuple[dict[str, Any], np.ndarray]] = []
        for item in progress(files, desc="predict", unit="slice", disable=not show_progress):
            record: dict[str, Any] = {"path": item.name}
            records.append(record)
            try:
                raw = read_slice(item.path)
                image = self.preprocess(raw)
            except (DataError, ValueError) as error:  # one bad file never stops the others
                record["error"] = str(error)
                continue
            record["warnings"] = degenerate(raw, image, self.image_size)
            pending.append((record, image))
            if len(pending) == BATCH:
                self._fill(pending)
                pending = []
        self._fill(pending)
        return records

    def _fill(self, pending: list[tuple[dict[str, Any], np.ndarray]]) -> None:
        """Add the prediction and class probabilities to each record of ``pending``."""
        if not pending:
            return
        rows = self.probabilities(np.stack([image for _, image in pending]))
        for (record, _), row in zip(pending, rows, strict=True):
            record["prediction"] = self.class_names[int(row.argmax())]
            record["probabilities"] = {name: round(float(p), 6) for name, p in zip(self.class_names, row, strict=True)}


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor an ONNX graph holds: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for attribute in (attribute for node in graph.node for attribute in node.attribute):
        yield from [attribute.t] if attribute.HasField("t") else []
        yield from attribute.tensors
        for subgraph in [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]:
            yield from _tensors(subgraph)


def degenerate(raw: np.ndarray, preprocessed: np.ndarray, image_size: int) -> list[str]:
    """Why a prediction on this slice means little: smaller than the model input, or no contrast."""
    notes = []
    if min(raw.shape) < image_size:
        notes.append(f"tiny image ({raw.shape[1]}x{raw.shape[0]} px, under the model's {image_size} px)")
    if raw.max() == raw.min():
        notes.append(f"constant image (every pixel is {raw.flat[0]})")
    elif preprocessed.max() == preprocessed.min():
        notes.append("no contrast left after normalisation")
    return notes


def format_table(records: Sequence[dict[str, Any]], class_names: Sequence[str]) -> str:
    """A plain-text table: file, prediction, one probability column per class and a note."""
    width = max(len("file"), *(len(r["path"]) for r in records))
    lines = [f"{'file':<{width}}  {'prediction':<12}" + "".join(f"{name:>12}" for name in class_names) + "  note"]
    for record in records:
        if "error" in record:
            lines.append(f"{record['path']:<{width}}  {'-':<12}" + f"{'-':>12}" * len(class_names)
                         + f"  error: {record['error']}")
            continue
        cells = "".join(f"{record['probabilities'][name]:>12.4f}" for name in class_names)
        note = "; ".join(record["warnings"])
        lines.append(f"{record['path']:<{width}}  {record['prediction']:<12}{cells}  {note}".rstrip())
    return "\n".join(lines)


def to_csv(records: Sequence[dict[str, Any]], skipped: Sequence[tuple[str, str]], class_names: Sequence[str]) -> str:
    """CSV rows ``path,status,prediction,<class>...,note``; status is ok, warning, error or skipped."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "status", "prediction", *class_names, "note"])
    for record in records:
        if "error" in record:
            writer.writerow([record["path"], "error", "", *[""] * len(class_names), record["error"]])
        else:
            writer.writerow([record["path"], "warning" if record["warnings"] else "ok", record["prediction"],
                             *(record["probabilities"][name] for name in class_names), "; ".join(record["warnings"])])
    for name, reason in skipped:
        writer.writerow([name, "skipped", "", *[""] * len(class_names), reason])
    return buffer.getvalue()


def write_predictions(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` (from :func:`main`) atomically as CSV or JSON, by the suffix of ``path``."""
    if path.suffix.lower() == ".json":
        atomic_write_json(path, report)
    else:
        atomic_write_text(path, to_csv(report["predictions"], [(s["path"], s["reason"]) for s in report["skipped"]],
                                       report["class_names"]))


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model.pt or model.onnx")
    parser.add_argument("inputs", nargs="+", help=".mat, .npy, .png, .jpg files or folders of them")
    parser.add_argument("--out", type=Path, help="also write every row to this .csv or .json file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--strict", action="store_true", help="exit with code 2 when any file failed")
    args = parser.parse_args(strip_debug_flag(sys.argv[1:] if argv is None else argv))
    if args.out is not None and args.out.suffix.lower() not in OUT_SUFFIXES:
        parser.error(f"--out must end in {' or '.join(OUT_SUFFIXES)}, got {args.out}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    predictor = Predictor(args.model)
    scan = find_slices(args.inputs)
    records = predictor.predict_files(scan.files, show_progress=True)
    report = {"model": str(args.model), "class_names": predictor.class_names, "predictions": records,
              "skipped": [{"path": name, "reason": reason} for name, reason in scan.skipped]}
    for name, reason in scan.skipped:
        log.warning("skipped %s: %s", name, reason)
    failed = [r for r in records if "error" in r]
    for record in failed:
        log.warning("failed %s", record["error"])
    for record in records:
        for note in record.get("warnings", []):
            log.warning("%s: %s", record["path"], note)
    if args.out is not None:
        write_predictions(args.out, report)
    if len(records) == 1 and failed:
        raise DataError(failed[0]["error"])
    if len(failed) == len(records):
        first = f"; first: {failed[0]['error']}" if failed else ""
        raise DataError(f"nothing predicted from {', '.join(args.inputs)}: {len(failed)} file(s) failed, "
                        f"{len(scan.skipped)} not slices{first}")
    print(json.dumps(report, indent=2) if args.json else format_table(records, predictor.class_names))
    if args.strict and failed:
        raise DataError(f"{len(failed)} of {len(records)} file(s) failed (--strict); first: {failed[0]['error']}")


if __name__ == "__main__":
    main()
