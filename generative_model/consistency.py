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


def onnx_session(model_path: Path, image_size: int):
    """An onnxruntime session of an exported classifier, checked to take ``(batch, 1, image_size, image_size)``.

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
    return session


def onnx_predictor(model_path: Path, image_size: int, batch_size: int = 256):
    """``predict(uint8 N x S x S) -> class indices`` backed by an exported ONNX classifier (:func:`onnx_session`)."""
    session = onnx_session(model_path, image_size)
    spec = session.get_inputs()[0]

    def predict(images: np.ndarray) -> np.ndarray:
        outputs = [session.run(None, {spec.name: images[i:i + batch_size, None].astype(np.float32) / 255.0})[0]
                   for i in range(0, len(images), batch_size)]
        return np.concatenate(outputs).argmax(1)

    return predict


class OnnxJudge:
    """An exported real-data classifier that returns its class probabilities and a feature vector per slice.

    The features are the last internal float tensor on the path to the probabilities with more values per image
    than there are classes (the class capsules of the capsule network, the pooled 2048 features of ResNet50),
    exposed as an extra output of an in-memory copy of the graph; the file on disk is not changed.

    Raises:
        DataError: as :func:`onnx_session`, or a graph without such a tensor.
    """

    def __init__(self, model_path: Path, image_size: int, batch_size: int = 128) -> None:
        import onnx
        import onnxruntime

        checked = onnx_session(model_path, image_size)
        self.input = checked.get_inputs()[0].name
        model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
        typed = {info.name: info for info in model.graph.value_info
                 if info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
                 and len(info.type.tensor_type.shape.dim) >= 2}
        probabilities = model.graph.output[0].name
        feeding = _ancestors(model.graph, probabilities)
        candidates = [name for node in model.graph.node for name in node.output
                      if name in typed and name in feeding and name != probabilities]
        model.graph.output.extend(typed[name] for name in candidates)
        self.session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        self.batch_size = batch_size
        probe = self.session.run(None, {self.input: np.zeros((2, 1, image_size, image_size), np.float32)})
        classes = probe[0].shape[-1]
        sized = [k for k, value in enumerate(probe[1:], start=1)
                 if value.ndim >= 2 and value.shape[0] == 2 and value[0].size > classes]
        if not sized:
            raise DataError(f"{model_path}: no internal tensor to use as features")
        self.feature_index = sized[-1]
        self.feature_name = candidates[self.feature_index - 1]

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities ``(N, classes)`` and features ``(N, D)`` of uint8 slices ``(N, S, S)``."""
        probabilities, features = [], []
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size, None].astype(np.float32) / 255.0
            outputs = self.session.run(None, {self.input: batch})
            probabilities.append(outputs[0])
            features.append(outputs[self.feature_index].reshape(len(batch), -1))
        return np.concatenate(probabilities), np.concatenate(features).astype(np.float64)


def _ancestors(graph, name: str) -> set[str]:
    """The names of every tensor that ``name`` is computed from in ``graph`` (``name`` included)."""
    producer = {output: node for node in graph.node for output in node.output}
    seen, stack = set(), [name]
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        if tensor in producer:
            stack.extend(producer[tensor].input)
    return seen


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
