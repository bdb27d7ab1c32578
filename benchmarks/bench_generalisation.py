"""Before / after issue 15, measured in one run: capsnet on the authors' patient-wise ``cvind`` 5 folds, real
slices only, under two or three settings, every fold of each on the same patients.

* ``before``: the old geometry (``data.geometry=resize``: the whole image stretched) and ``augment=basic``.
* ``after``: the canonical geometry (head crop, square, figshare margin) and ``augment=robust``.
* ``canonical_basic`` (``--settings before after canonical_basic``): the canonical geometry with ``augment=basic``.
* ``after_ema``: ``after`` with ``train.ema_decay=0.998`` (an exponential moving average of the weights).
* ``after_long``: ``after`` with ``train.epochs=60``.
* ``after_attention``: ``after_long`` with ``model.kwargs.attention=true`` (capsnet's mask-supervised gate).
* ``after_attention_s4``: ``after_attention`` with the gate at stride 4 (``model.kwargs.attention_stride=4``).
* ``after_attention_context``: ``after_attention_s4`` with the gate's context convolutions
  (``model.kwargs.attention_dilations=[2,4,8]``).

    python benchmarks/bench_generalisation.py [--root ../shared/data] [--out runs/bench_generalisation]
        [--folds 0 1 2 3 4] [--settings before after ...] [--external runs/external/glioma]
        [--json FILE] [KEY=VALUE ...]

Each fold is an ordinary ``capsule_classifier/train.py`` run in its own directory (``<out>/<setting>/...``), so
re-running the command skips finished folds and resumes an interrupted one from its checkpoint. ``KEY=VALUE``
overrides go to every run (``train.epochs=1`` for a quick check). Prints accuracy and macro-F1 (mean ± sample
std over folds) per setting and the paired difference after - before; ``--external`` also scores every fold's
model on an external check (a folder tree or CSV for ``capsule_classifier/evaluate.py``, e.g. the glioma check
``python -m datasets.external_glioma`` builds), preprocessed with the fold's own geometry. Writes the numbers
and every fold's to ``--json`` (default ``<out>/results.json``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose, initialize_config_dir

from capsule_classifier import train
from capsule_classifier.evaluate import evaluate, load_labelled
from capsule_classifier.predict import Predictor
from datasets.transforms import preprocess_slice
from experiment.atomic import atomic_write_json
from experiment.metrics import mean_std

CONFIG_DIR = Path(__file__).resolve().parents[1] / "capsule_classifier" / "configs"
SETTINGS = {"before": {"data.geometry": "resize", "augment": "basic"},
            "after": {"data.geometry": "canonical", "augment": "robust"},
            "canonical_basic": {"data.geometry": "canonical", "augment": "basic"},
            "after_ema": {"data.geometry": "canonical", "augment": "robust", "train.ema_decay": "0.998"},
            "after_long": {"data.geometry": "canonical", "augment": "robust", "train.epochs": "60"},
            "after_attention": {"data.geometry": "canonical", "augment": "robust", "train.epochs": "60",
                                "+model.kwargs.attention": "true"},
            "after_attention_s4": {"data.geometry": "canonical", "augment": "robust", "train.epochs": "60",
                                   "+model.kwargs.attention": "true", "+model.kwargs.attention_stride": "4"},
            "after_attention_context": {"data.geometry": "canonical", "augment": "robust", "train.epochs": "60",
                                        "+model.kwargs.attention": "true", "+model.kwargs.attention_stride": "4",
                                        "+model.kwargs.attention_dilations": "[2,4,8]"}}
"""``canonical_basic`` (optional) separates the geometry's share of the difference from the augmentation's;
``after_ema`` validates, selects and saves a moving average of ``after``'s weights (the same training draws);
``after_long`` trains ``after`` for 60 epochs instead of 40 (the robust augmentation's models were still improving);
``after_attention`` is ``after_long`` with capsnet's tumour attention gate, supervised by the masks, at stride 8;
``after_attention_s4`` the same gate at stride 4; ``after_attention_context`` that gate with dilated context
convolutions (its 25 px receptive field missed gliomas for other bright structures)."""
BASELINE = "before"
COMMON = {"model": "capsnet", "data.split": "cvind", "data.image_size": "128", "pretrain.shards": "null",
          "monitor.visdom": "false", "seed": "0"}
METRICS = ("accuracy", "macro_f1")


class GeometryPredictor(Predictor):
    """A :class:`Predictor` that preprocesses with a given geometry (the one its model was trained with)."""

    def __init__(self, model_path: Path, geometry: str) -> None:
        super().__init__(model_path)
        self.geometry = geometry

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        return preprocess_slice(image, self.image_size, geometry=self.geometry)


def run_fold(setting: str, fold: int, root: str, out: Path, extra: Sequence[str]) -> dict[str, Any]:
    """Train (or read back) one fold of one setting; return its test metrics and test file ids."""
    overrides = {**COMMON, **SETTINGS[setting], "data.root": root, "fold": str(fold), "out": str(out / setting)}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose("train", overrides=[f"{key}={value}" for key, value in overrides.items()] + list(extra))
    train.check_config(cfg)
    summary = train.run(cfg)
    run_dir = Path(cfg.run_dir)
    tested = json.loads((run_dir / "predictions.json").read_text(encoding="utf-8"))["file_ids"]
    return {"fold": fold, "run_dir": str(run_dir), "geometry": cfg.data.geometry,
            **{name: float(summary["test"][name]) for name in METRICS}, "selected_epoch": summary["selected_epoch"],
            "test_slices": len(tested), "test_ids_sha256": hashlib.sha256(str(sorted(tested)).encode()).hexdigest()}


def score_external(fold: dict[str, Any], external: Path) -> dict[str, float]:
    """Accuracy and macro-F1 of a fold's model on the external check, in the fold's geometry."""
    predictor = GeometryPredictor(Path(fold["run_dir"]) / "model.pt", fold["geometry"])
    report = evaluate(predictor, load_labelled(external, predictor.class_names), fold["run_dir"], str(external))
    return {name: float(report[name]) for name in METRICS}


def summarise(folds: dict[str, list[dict[str, Any]]], key: str | None = None) -> dict[str, Any]:
    """Mean ± std per setting and of each setting's paired difference from :data:`BASELINE` (``<setting>_minus_
    before``), of the test metrics or, with ``key``, of ``fold[key]`` (the external check)."""
    def values(setting: str, name: str) -> list[float]:
        return [(fold if key is None else fold[key])[name] for fold in folds[setting]]

    result: dict[str, Any] = {setting: {name: mean_std(values(setting, name)) for name in METRICS}
                              for setting in folds}
    for setting in folds:
        if setting != BASELINE:
            pairs = {name: list(zip(values(setting, name), values(BASELINE, name), strict=True)) for name in METRICS}
            result[f"{setting}_minus_{BASELINE}"] = {
                name: {**mean_std([a - b for a, b in pairs[name]]),
                       "folds_improved": sum(a > b for a, b in pairs[name])} for name in METRICS}
    return result


def table(title: str, result: dict[str, Any]) -> str:
    """``result`` (from :func:`summarise`) as aligned text lines."""
    def cell(row: str, name: str) -> str:
        value = result[row][name]
        return f"{value['mean']:+.4f} ± {value['std']:.4f}" if row not in SETTINGS else \
            f"{value['mean']:.4f} ± {value['std']:.4f}"

    lines = [title, f"{'':<26}{'accuracy':>20}{'macro-F1':>20}"]
    lines += [f"{row:<26}{cell(row, 'accuracy'):>20}{cell(row, 'macro_f1'):>20}"
              for row in result]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="../shared/data", help="figshare bundle folder (data.root)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_generalisation"))
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(5)))
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=[BASELINE, "after"],
                        help=f"settings to train and compare with {BASELINE!r} (always included)")
    parser.add_argument("--external", type=Path, help="an external check for evaluate.py (folder tree or CSV)")
    parser.add_argument("--json", type=Path, help="results file (default <out>/results.json)")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE for every capsule_classifier/train.py run")
    args = parser.parse_args(argv)
    settings = list(dict.fromkeys([BASELINE, *args.settings]))
    folds = {setting: [run_fold(setting, fold, args.root, args.out, args.overrides) for fold in args.folds]
             for setting in settings}
    for setting in settings:
        for base, other in zip(folds[BASELINE], folds[setting], strict=True):
            if base["test_ids_sha256"] != other["test_ids_sha256"]:
                raise SystemExit(f"fold {base['fold']}: {setting} tested other slices than {BASELINE}; not paired")
    results: dict[str, Any] = {"settings": {setting: SETTINGS[setting] for setting in settings},
                               "common": {**COMMON, "data.root": args.root},
                               "overrides": args.overrides, "folds": folds, "test": summarise(folds)}
    print(table("test folds (cvind, patient-wise)", results["test"]))
    if args.external is not None:
        for setting in settings:
            for fold in folds[setting]:
                fold["external"] = score_external(fold, args.external)
        external = summarise(folds, "external")
        results["external"] = {"data": str(args.external), **external}
        print(table(f"external check {args.external}", external))
    atomic_write_json(args.json or args.out / "results.json", results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
