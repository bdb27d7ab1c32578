"""Class consistency of a synthetic shard set: the share of its slices that a classifier trained on *real*
data (the same fold's ``synthetic=false`` run, exported to ONNX) assigns to their intended class.

The generator and the classifier meet only through files on disk: shards in, an ONNX file in
(``capsule_classifier/export.py``: input ``image`` float32 ``(N, 1, S, S)`` = uint8 / 255, output
``probabilities``), ``consistency.json`` out.

    python -m generative_model.consistency runs/.../shards/fold0 runs/.../scratch/fold0/model.onnx
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from datasets.core import DataError, check_allocation
from datasets.shards import read_shards
from experiment.atomic import atomic_write_json, remove_temporaries
from experiment.cli import reports_user_errors, strip_debug_flag
from generative_model.quality import class_consistency

log = logging.getLogger(__name__)

RESULT_FILE = "consistency.json"


def onnx_predictor(model_path: Path, image_size: int, batch_size: int = 256):
    """``predict(uint8 N x S x S) -> class indices`` backed by an exported ONNX classifier.

    onnxruntime reads the file from its path, so weights stored beside it resolve inside its folder only
    (onnxruntime refuses paths that lead out of it).

    Raises:
        DataError: a missing, oversized or unloadable file, or a model whose input is not
            ``(batch, 1, image_size, image_size)``.
    """
    import onnxruntime

    model_path = Path(model_path)
    if not model_path.is_file():
        raise DataError(f"classifier not found: {model_path}")
    check_allocation(model_path.stat().st_size, f"{model_path}: ONNX model")
    try:
        session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types for foreign or broken files
        raise DataError(f"{model_path} is not a loadable ONNX model: {error}") from error
    spec = session.get_inputs()[0]
    if list(spec.shape[1:]) != [1, image_size, image_size]:
        raise DataError(f"{model_path} expects input {spec.shape}, the shards hold {image_size}x{image_size} slices")

    def predict(images: np.ndarray) -> np.ndarray:
        outputs = [session.run(None, {spec.name: images[i:i + batch_size, None].astype(np.float32) / 255.0})[0]
                   for i in range(0, len(images), batch_size)]
        return np.concatenate(outputs).argmax(1)

    return predict


def shard_consistency(shards: Path, model_path: Path) -> dict:
    """Class consistency of ``shards`` under the ONNX classifier ``model_path``; written to the shard folder."""
    images, labels, manifest = read_shards(shards)
    result = class_consistency(onnx_predictor(model_path, images.shape[-1]), images, labels)
    result.update(classifier=str(model_path), shards=str(shards), provenance=manifest.get("provenance", {}))
    remove_temporaries(shards)  # a killed earlier write's; the set is finished, so no writer is running
    atomic_write_json(shards / RESULT_FILE, result)
    return result


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", type=Path, help="a finished shard folder")
    parser.add_argument("classifier", type=Path, help="model.onnx of a classifier trained on real data only")
    args = parser.parse_args(strip_debug_flag(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = shard_consistency(args.shards, args.classifier)
    print(json.dumps({k: result[k] for k in ("n", "consistency", "per_class")}, indent=2))


if __name__ == "__main__":
    main()
