"""Classify slices with a trained classifier (``model.pt``) or its ONNX export, say when a slice is out of scope,
and show where the model looked.

    python capsule_classifier/predict.py [MODEL] INPUT [INPUT ...] [--out FILE.csv|FILE.json] [--json] [--strict]
        [--explain DIR]

``MODEL`` is a ``model.pt`` from ``capsule_classifier/train.py`` or an ``.onnx`` file from
``capsule_classifier/export.py``; when the first argument does not end in ``.pt`` or ``.onnx``, every argument is an
input and the released model is used (``models/capsnet-figshare.onnx`` of ``capsule_classifier/release.py``, or
the file ``$BRAIN_TUMOUR_MODEL`` names). Each ``INPUT`` is a slice file (figshare ``.mat``, whatever its name;
``.png``/``.jpg``, converted to grey; a 2-D ``.npy`` array) or a folder, searched recursively; paths are shown
relative to the folder. Every slice goes through exactly the training preprocessing
(``datasets.transforms.preprocess_slice`` at the model's image size and in its geometry).

Probabilities are calibrated when the model is (``capsule_classifier/trust.py``). A model with an out-of-scope
detector also gives each slice its ``out_of_scope_score``; above the model's threshold the prediction is
``out of scope`` instead of a class: the input does not look like the T1-CE tumour slices the model knows.
``--explain DIR`` (``model.pt`` only: it needs gradients) writes, per input, ``DIR/<shown path>.png``: the
slice under its explanation map (:mod:`capsule_classifier.explain`).

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
from capsule_classifier.deploy import (
    ModelInputError,
    check_class_names,
    check_geometry,
    check_image_size,
    default_model,
)
from capsule_classifier.export import INPUT_NAME, OUTPUT_NAME, SCORE_NAME, THRESHOLD_KEY
from datasets.core import DataError, check_allocation
from datasets.transforms import GEOMETRIES, preprocess_slice
from datasets.user_slices import InputFile, find_slices, read_slice
from experiment.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from experiment.cli import reports_user_errors, strip_debug_flag
from experiment.progress import progress

log = logging.getLogger(__name__)

BATCH = 64
OUT_SUFFIXES = (".csv", ".json")
MODEL_SUFFIXES = (".pt", ".onnx")
OUT_OF_SCOPE = "out of scope"
"""The prediction of a slice whose out-of-scope score exceeds the model's threshold."""


class Predictor:
    """Calibrated class probabilities and out-of-scope scores from a ``model.pt`` checkpoint or an ONNX export;
    ``image_size``, ``class_names`` and the out-of-scope ``threshold`` (None: the model has no detector) come
    from the checkpoint or the ONNX metadata, checked before anything is built."""

    def __init__(self, model_path: str | os.PathLike) -> None:
        self.path = Path(model_path)
        if self.path.suffix.lower() == ".onnx":
            self._init_onnx()
        else:
            from capsule_classifier.deploy import load_classifier

            self.classifier, meta = load_classifier(self.path)
            self.session = None
            self.image_size, self.class_names = meta["image_size"], meta["class_names"]
            self.model_name, self.geometry = meta["model_name"], meta["geometry"]
            detector = self.classifier.detector
            self.threshold = None if detector is None else detector.threshold

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
        self.geometry = check_geometry(metadata.get("geometry", GEOMETRIES[0]), self.path)
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
        self.classifier, self.model_name = None, metadata.get("model_name")
        self.threshold = _onnx_threshold(self.path, metadata.get(THRESHOLD_KEY), SCORE_NAME in outputs)
        self.outputs = [OUTPUT_NAME] + ([SCORE_NAME] if self.threshold is not None else [])

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """The training preprocessing of one raw slice -> uint8 (S, S)."""
        return preprocess_slice(image, self.image_size, geometry=self.geometry)

    def scored(self, slices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated class probabilities (N, C) and out-of-scope scores (N,) (None without a detector) of
        preprocessed uint8 slices (N, S, S)."""
        batch = to_input(slices)
        if self.session is not None:
            results = self.session.run(self.outputs, {INPUT_NAME: batch.numpy()})
            return results[0], results[1] if len(results) > 1 else None
        with torch.no_grad():
            probabilities, score = self.classifier.scored(batch)
        return probabilities.numpy(), None if score is None else score.numpy()

    def predict_files(self, files: Sequence[InputFile], show_progress: bool = False,
                      explain: Path | None = None) -> list[dict[str, Any]]:
        """One record per file, in order: ``path`` (its shown name), ``prediction`` (a class, or
        :data:`OUT_OF_SCOPE`), calibrated ``probabilities`` and ``out_of_scope_score`` (None without a detector),
        with ``warnings`` for degenerate images and, with ``explain`` (a folder), ``explanation`` (the overlay
        written there); or ``error`` when the file could not be read (the others go on).

        Raises:
            ModelInputError: ``explain`` with an ONNX model, which has no gradients.
        """
        if explain is not None and self.classifier is None:
            raise ModelInputError(f"{self.path}: explanation maps need the model.pt (gradients), not an ONNX export")
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
                self._fill(pending, explain)
                pending = []
        self._fill(pending, explain)
        return records

    def _fill(self, pending: list[tuple[dict[str, Any], np.ndarray]], explain: Path | None) -> None:
        """Add the prediction, probabilities and out-of-scope score (and the explanation) to each record."""
        if not pending:
            return
        images = np.stack([image for _, image in pending])
        rows, scores = self.scored(images)
        for index, (record, _) in enumerate(pending):
            row = rows[index]
            score = None if scores is None else float(scores[index])
            out = score is not None and score > self.threshold
            record["prediction"] = OUT_OF_SCOPE if out else self.class_names[int(row.argmax())]
            record["probabilities"] = {name: round(float(p), 6) for name, p in zip(self.class_names, row, strict=True)}
            record["out_of_scope_score"] = None if score is None else round(score, 6)
        if explain is not None:
            from capsule_classifier.explain import explanation_layer, explanation_maps, overlay
            from datasets.external_glioma import png_bytes

            maps, _ = explanation_maps(self.classifier, explanation_layer(self.model_name, self.classifier.model),
                                        images)
            for (record, image), cam in zip(pending, maps, strict=True):
                name = overlay_name(record["path"])
                atomic_write_bytes(explain / name, png_bytes(overlay(image, cam)))
                record["explanation"] = name


def model_and_inputs(paths: Sequence[str]) -> tuple[Path, list[str]]:
    """``[MODEL] INPUT ...`` split: the first path when it ends in one of :data:`MODEL_SUFFIXES`, else the default
    model (:func:`capsule_classifier.deploy.default_model`), and the inputs.

    Raises:
        ModelInputError: no model given and the default model is missing (the message says how to get one).
    """
    if paths and Path(paths[0]).suffix.lower() in MODEL_SUFFIXES and not Path(paths[0]).is_dir():
        return Path(paths[0]), list(paths[1:])
    model = default_model()
    if not model.is_file():
        raise ModelInputError(f"no MODEL given and the default model {model} is missing: train the folds "
                              "(capsule_classifier/train.py) and release one (capsule_classifier/release.py STUDY), "
                              "or pass a model.pt or .onnx before the inputs")
    return model, list(paths)


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor an ONNX graph holds: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for attribute in (attribute for node in graph.node for attribute in node.attribute):
        yield from [attribute.t] if attribute.HasField("t") else []
        yield from attribute.tensors
        for subgraph in [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]:
            yield from _tensors(subgraph)


def _onnx_threshold(path: Path, value: str | None, has_score: bool) -> float | None:
    """The out-of-scope threshold in ONNX metadata; None when the graph has no score output."""
    if not has_score and value is None:
        return None
    try:
        threshold = float(value) if has_score and value is not None and len(value) <= 40 else float("nan")
    except ValueError:
        threshold = float("nan")
    if not np.isfinite(threshold):
        raise ModelInputError(f"{path}: an {SCORE_NAME!r} output needs a finite {THRESHOLD_KEY!r} in the metadata, "
                              f"and the metadata's threshold needs the output; got {str(value)[:40]!r}")
    return threshold


def overlay_name(shown: str) -> str:
    """Where the explanation of the input shown as ``shown`` goes, relative to the ``--explain`` folder: the
    shown path without root or ``..`` parts, plus ``.png``."""
    parts = [part for part in Path(shown).parts if part not in ("..", ".") and part != Path(shown).anchor]
    return "/".join(parts) + ".png"


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
    """A plain-text table: file, prediction, one probability column per class, the out-of-scope score (when the
    model has a detector) and a note."""
    width = max(len("file"), *(len(r["path"]) for r in records))
    scored = any(r.get("out_of_scope_score") is not None for r in records)
    columns = [*class_names, *(["scope score"] if scored else [])]
    lines = [f"{'file':<{width}}  {'prediction':<12}" + "".join(f"{name:>12}" for name in columns) + "  note"]
    for record in records:
        if "error" in record:
            lines.append(f"{record['path']:<{width}}  {'-':<12}" + f"{'-':>12}" * len(columns)
                         + f"  error: {record['error']}")
            continue
        cells = "".join(f"{record['probabilities'][name]:>12.4f}" for name in class_names)
        cells += f"{record['out_of_scope_score']:>12.4g}" if scored else ""
        note = "; ".join(record["warnings"])
        lines.append(f"{record['path']:<{width}}  {record['prediction']:<12}{cells}  {note}".rstrip())
    return "\n".join(lines)


def to_csv(records: Sequence[dict[str, Any]], skipped: Sequence[tuple[str, str]], class_names: Sequence[str]) -> str:
    """CSV rows ``path,status,prediction,<class>...,out_of_scope_score,explanation,note``; status is ok, warning,
    error or skipped; empty cells where a value does not apply."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "status", "prediction", *class_names, "out_of_scope_score", "explanation", "note"])
    blank = [""] * (len(class_names) + 2)
    for record in records:
        if "error" in record:
            writer.writerow([record["path"], "error", "", *blank, record["error"]])
        else:
            score = record["out_of_scope_score"]
            writer.writerow([record["path"], "warning" if record["warnings"] else "ok", record["prediction"],
                             *(record["probabilities"][name] for name in class_names),
                             "" if score is None else score, record.get("explanation", ""),
                             "; ".join(record["warnings"])])
    for name, reason in skipped:
        writer.writerow([name, "skipped", "", *blank, reason])
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
    parser.add_argument("paths", nargs="+", metavar="[MODEL] INPUT",
                        help="model.pt or .onnx (default: the released model), then .mat, .npy, .png, .jpg files or "
                             "folders of them")
    parser.add_argument("--out", type=Path, help="also write every row to this .csv or .json file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--strict", action="store_true", help="exit with code 2 when any file failed")
    parser.add_argument("--explain", type=Path, metavar="DIR",
                        help="write an explanation overlay PNG per input under DIR (model.pt only)")
    args = parser.parse_args(strip_debug_flag(sys.argv[1:] if argv is None else argv))
    if args.out is not None and args.out.suffix.lower() not in OUT_SUFFIXES:
        parser.error(f"--out must end in {' or '.join(OUT_SUFFIXES)}, got {args.out}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    model, inputs = model_and_inputs(args.paths)
    if not inputs:
        parser.error(f"no INPUT after the model {model}")
    if args.explain is not None and model.suffix.lower() == ".onnx":
        parser.error("--explain needs the model.pt: an ONNX export has no gradients")
    predictor = Predictor(model)
    scan = find_slices(inputs)
    records = predictor.predict_files(scan.files, show_progress=True, explain=args.explain)
    report = {"model": str(model), "class_names": predictor.class_names,
              "out_of_scope_threshold": predictor.threshold, "predictions": records,
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
        raise DataError(f"nothing predicted from {', '.join(inputs)}: {len(failed)} file(s) failed, "
                        f"{len(scan.skipped)} not slices{first}")
    print(json.dumps(report, indent=2) if args.json else format_table(records, predictor.class_names))
    if args.strict and failed:
        raise DataError(f"{len(failed)} of {len(records)} file(s) failed (--strict); first: {failed[0]['error']}")


if __name__ == "__main__":
    main()
