"""The post-hoc trust step of a finished fold: calibrate it, fit its out-of-scope detector, check its
explanation maps against the tumour masks.

    python -m capsule_classifier.trust RUN_DIR [RUN_DIR ...] [--out-of-scope runs/out_of_scope]

``RUN_DIR`` is a fold directory of ``capsule_classifier/train.py`` (``model.pt``, ``config.yaml``); its slices
and parts come from its config through :func:`datasets.splits.load_fold` (the same folds file). Then:

1. calibration: the temperature is fitted on the validation patients; ECE and Brier score before and after on
   validation and test go to ``calibration.json``, the reliability diagram to ``reliability.png``;
2. out of scope: the detector is fitted on the training patients' slices and its threshold chosen on the
   validation patients plus the ``fit`` part of the out-of-scope set (:mod:`datasets.out_of_scope_set`, built
   when missing); ``out_of_scope.json`` holds the false-reject rate on the test patients and the AUROC of the
   in-scope test slices against the ``report`` part of each out-of-scope source;
3. explanations: explanation maps of the test slices against their tumour masks (``explanations.json``).

The temperature and the detector are written into ``model.pt``. Test slices are measured, never fitted on;
re-running refits from the same weights and gives the same result.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from capsule_classifier import out_of_scope as scope
from capsule_classifier.calibration import calibrate, calibration_metrics, fit_temperature, reliability_figure
from capsule_classifier.deploy import ProbabilityModel, load_classifier, update_classifier
from capsule_classifier.evaluate import save_png
from capsule_classifier.explain import explanation_layer, explanation_maps, localisation, map_method
from datasets.core import SliceSet
from datasets.out_of_scope_set import DEFAULT_OUT, SOURCES, OutOfScopeSet, ensure_built, load_out_of_scope
from datasets.splits import load_fold
from experiment.atomic import atomic_write_json
from experiment.cli import reports_user_errors, strip_debug_flag
from experiment.metrics import mean_std
from experiment.rundir import CONFIG_FILE

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
LEGACY_GEOMETRY = "resize"
"""The slice geometry of runs whose config predates ``data.geometry``."""
FILES = {"calibration": "calibration.json", "out_of_scope": "out_of_scope.json", "explanations": "explanations.json"}


@dataclass
class FoldOutputs:
    """Uncalibrated probabilities and pooled features (layer -> (N, D)) of a fold's parts and of the
    out-of-scope set."""

    probabilities: dict[str, np.ndarray]
    features: dict[str, dict[str, np.ndarray]]
    oos_probabilities: np.ndarray
    oos_features: dict[str, np.ndarray]


def fold_outputs(classifier: ProbabilityModel, parts: dict[str, SliceSet], out_of_scope: OutOfScopeSet,
                 layers: Sequence[str]) -> FoldOutputs:
    """The uncalibrated outputs of ``classifier`` (its temperature and detector left aside) on every part."""
    raw = ProbabilityModel(classifier.model, classifier.objective).eval()
    runs = {name: scope.outputs(raw, part.images, layers) for name, part in parts.items()}
    oos_probabilities, oos_features = scope.outputs(raw, out_of_scope.images, layers)
    return FoldOutputs({name: run[0] for name, run in runs.items()}, {name: run[1] for name, run in runs.items()},
                       oos_probabilities, oos_features)


def calibration_report(outputs: FoldOutputs, parts: dict[str, SliceSet]) -> dict[str, Any]:
    """The temperature fitted on the validation patients, with ECE and Brier before and after on val and test."""
    temperature = fit_temperature(outputs.probabilities["val"], parts["val"].labels)
    report: dict[str, Any] = {"temperature": temperature, "fitted_on": "validation patients",
                              "method": "temperature on log probabilities (logits for resnet50, log capsule lengths "
                                        "for capsnet)"}
    for name in ("val", "test"):
        before = outputs.probabilities[name]
        after = calibrate(torch.from_numpy(before), temperature).numpy()
        report[name] = {"before": calibration_metrics(before, parts[name].labels),
                        "after": calibration_metrics(after, parts[name].labels)}
    return report


def fit_out_of_scope(outputs: FoldOutputs, parts: dict[str, SliceSet], out_of_scope: OutOfScopeSet,
                     layers: Sequence[str]) -> tuple[scope.OutOfScopeDetector, dict[str, Any]]:
    """The detector on ``layers`` (fitted on the training slices, threshold chosen on validation + the ``fit``
    part) and its :func:`out_of_scope_report`."""
    detector = scope.fit_detector(scope.joined(outputs.features["train"], layers), parts["train"].labels, layers)
    score = {name: scope.scores(detector, scope.joined(value, layers)) for name, value in outputs.features.items()}
    oos_score = scope.scores(detector, scope.joined(outputs.oos_features, layers))
    detector.threshold = scope.choose_threshold(score["val"], oos_score[out_of_scope.select("fit")])
    report = out_of_scope_report(score, oos_score, out_of_scope, detector.threshold)
    report.update({"score": scope.SCORE, "layers": list(layers), "fitted_on": "training patients' slices",
                   "threshold_chosen_on": "validation patients + the out-of-scope set's fit part"})
    return detector, report


def out_of_scope_report(score: dict[str, np.ndarray], oos_score: np.ndarray, out_of_scope: OutOfScopeSet,
                        threshold: float) -> dict[str, Any]:
    """False-reject rates of the in-scope parts, and per out-of-scope source (its ``report`` part): AUROC
    against the in-scope test slices and the share caught at ``threshold``."""
    report: dict[str, Any] = {"threshold": threshold, "target_false_reject": scope.TARGET_FALSE_REJECT,
                              **{f"{name}_false_reject": float((value > threshold).mean())
                                 for name, value in score.items()}, "sources": {}}
    for source in SOURCES:
        members = oos_score[out_of_scope.select("report", source)]
        if members.size:
            report["sources"][source] = {"n": int(members.size), "auroc": scope.auroc(score["test"], members),
                                         "caught": float((members > threshold).mean())}
    return report


def fit_trust(run_dir: str | os.PathLike, parts: dict[str, SliceSet], out_of_scope: OutOfScopeSet) -> dict[str, Any]:
    """Run the three steps of the module docstring on the fold in ``run_dir``; return what they wrote."""
    run_dir = Path(run_dir)
    classifier, meta = load_classifier(run_dir / MODEL_FILE)
    layers = scope.FEATURE_LAYERS[meta["model_name"]]
    outputs = fold_outputs(classifier, parts, out_of_scope, layers)
    calibration = calibration_report(outputs, parts)
    title = f"{meta['model_name']} fold {meta.get('fold', '?')}: T = {calibration['temperature']:.3f}"
    save_png(run_dir / "reliability.png", reliability_figure(
        {f"{name} {stage}": calibration[name][stage] for name in ("val", "test") for stage in ("before", "after")},
        title))
    detector, detection = fit_out_of_scope(outputs, parts, out_of_scope, layers)
    layer = explanation_layer(meta["model_name"], classifier.model)
    maps, _ = explanation_maps(classifier, layer, parts["test"].images)
    explanations = {"layer": layer, "method": map_method(layer),
                    "file_ids": parts["test"].file_ids.tolist(), **localisation(maps, parts["test"].masks)}
    update_classifier(run_dir / MODEL_FILE,
                      calibration={"temperature": calibration["temperature"], "fitted_on": "validation patients"},
                      out_of_scope={**detector.metadata(), "target_false_reject": scope.TARGET_FALSE_REJECT})
    written = {"calibration": calibration, "out_of_scope": detection, "explanations": explanations}
    for key, content in written.items():
        atomic_write_json(run_dir / FILES[key], content)
    log.info("%s: %s", run_dir, headline(written))
    return written


def headline(written: dict[str, Any]) -> str:
    """One line of what :func:`fit_trust` found."""
    calibration, detection = written["calibration"], written["out_of_scope"]
    return (f"T = {calibration['temperature']:.3f}; test ECE {calibration['test']['before']['ece']:.3f} -> "
            f"{calibration['test']['after']['ece']:.3f}; test false rejects {detection['test_false_reject']:.3f}; "
            "AUROC " + ", ".join(f"{s} {v['auroc']:.3f}" for s, v in detection["sources"].items())
            + f"; pointing game {written['explanations']['pointing_game']:.3f}")


def headline_numbers(written: dict[str, Any]) -> dict[str, Any]:
    """The numbers of :func:`fit_trust`'s result that a fold summary and the cross-validation report carry."""
    calibration, detection, maps = written["calibration"], written["out_of_scope"], written["explanations"]
    return {"temperature": calibration["temperature"],
            **{f"test_{metric}_{stage}": calibration["test"][stage][metric]
               for metric in ("ece", "brier") for stage in ("before", "after")},
            "test_false_reject": detection["test_false_reject"],
            **{f"auroc_{source}": value["auroc"] for source, value in detection["sources"].items()},
            "pointing_game": maps["pointing_game"], "mass_in_dilated_mask": maps["mass_in_dilated_mask"]}


def aggregate_trust(folds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Over folds (each :func:`read_trust`'s result with ``fold``): per fold and mean ± sample std of
    :func:`headline_numbers`, and the test reliability tables before and after calibration pooled over folds."""
    per_fold = [{"fold": f["fold"], **headline_numbers(f)} for f in folds]
    keys = [key for key in per_fold[0] if key != "fold" and all(key in row for row in per_fold)]
    stats = {key: mean_std([row[key] for row in per_fold]) for key in keys}
    pooled = {stage: pool_reliability([f["calibration"]["test"][stage]["reliability"] for f in folds])
              for stage in ("before", "after")}
    return {"per_fold": per_fold, **stats, "test_reliability": pooled}


def aggregate_lines(groups: dict[str, dict[str, Any]]) -> list[str]:
    """A Markdown table of :func:`aggregate_trust` results, one row per setting: mean ± sample std over folds."""
    columns = [("T", ["temperature"]), ("test ECE before -> after", ["test_ece_before", "test_ece_after"]),
               ("test Brier before -> after", ["test_brier_before", "test_brier_after"]),
               ("test false rejects", ["test_false_reject"]),
               *[(f"AUROC {source}", [f"auroc_{source}"]) for source in SOURCES],
               ("pointing game", ["pointing_game"]), ("mass in dilated mask", ["mass_in_dilated_mask"])]
    lines = ["| setting | folds | " + " | ".join(title for title, _ in columns) + " |",
             "|---" * (2 + len(columns)) + "|"]
    for key, group in groups.items():
        cells = [" -> ".join(f"{group[k]['mean']:.3f} ± {group[k]['std']:.3f}" if k in group else "-" for k in keys)
                 for _, keys in columns]
        lines.append(f"| {key} | {len(group['per_fold'])} | " + " | ".join(cells) + " |")
    return lines


def pool_reliability(tables: Sequence[dict[str, list]]) -> dict[str, Any]:
    """Reliability tables of several sets merged bin by bin (slice-weighted), with their ECE."""
    count = np.sum([t["count"] for t in tables], axis=0)
    merged: dict[str, Any] = {"count": count.tolist(), "confidence": [], "accuracy": []}
    for key in ("confidence", "accuracy"):
        weighted = np.sum([[0.0 if v is None else v * n for v, n in zip(t[key], t["count"], strict=True)]
                           for t in tables], axis=0)
        merged[key] = [float(w / n) if n else None for w, n in zip(weighted, count, strict=True)]
    merged["ece"] = float(sum(n * abs(a - c) for n, a, c in zip(count, merged["accuracy"], merged["confidence"],
                                                                strict=True) if n) / count.sum())
    return merged


def read_trust(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """What :func:`fit_trust` wrote in ``run_dir`` (the three JSON files), or None when it has not run there."""
    try:
        return {key: json.loads((Path(run_dir) / name).read_text(encoding="utf-8")) for key, name in FILES.items()}
    except (OSError, ValueError):
        return None


def trust_table(folds: Sequence[dict[str, Any]]) -> list[str]:
    """A Markdown table, one row per fold: each is :func:`fit_trust`'s result with ``model`` and ``fold`` (and
    optionally ``external``: the share answered out of scope and the accuracy on in-scope data from elsewhere)."""
    sources = [s for s in SOURCES if any(s in f["out_of_scope"]["sources"] for f in folds)]
    lines = ["| fold | T | test ECE before -> after | test Brier before -> after | test false rejects | "
             + " | ".join(f"AUROC {s}" for s in sources) + " | pointing game (chance) | mass in mask (chance) "
             "| external rejected / accuracy |", "|---" * (8 + len(sources)) + "|"]
    for f in folds:
        c, o, e = f["calibration"], f["out_of_scope"], f["explanations"]
        external = f"{f['external']['rate']:.3f} / {f['external']['accuracy']:.3f}" if "external" in f else "-"
        lines.append(
            f"| {f['model']} {f['fold']} | {c['temperature']:.3f} | {c['test']['before']['ece']:.3f} -> "
            f"{c['test']['after']['ece']:.3f} | {c['test']['before']['brier']:.3f} -> {c['test']['after']['brier']:.3f}"
            f" | {o['test_false_reject']:.3f} | "
            + " | ".join(f"{o['sources'][s]['auroc']:.3f}" if s in o["sources"] else "-" for s in sources)
            + f" | {e['pointing_game']:.3f} ({e['chance_pointing_game']:.3f}) | {e['mass_in_dilated_mask']:.3f} "
            f"({e['chance_mass_in_dilated_mask']:.3f}) | {external} |")
    return lines


def fold_parts(run_dir: str | os.PathLike) -> tuple[dict[str, SliceSet], int, str]:
    """The ``train``, ``val`` and ``test`` slices of the fold that ``run_dir`` trained on (from its config), their
    image size and slice geometry (``resize`` for a config older than ``data.geometry``, as it was then)."""
    cfg = OmegaConf.load(Path(run_dir) / CONFIG_FILE)
    data_cfg = OmegaConf.merge({"geometry": LEGACY_GEOMETRY}, cfg.data)
    data, index, _ = load_fold(data_cfg, cfg.fold)
    parts = {name: data.subset(indices) for name, indices in index.items()}
    return parts, int(data_cfg.image_size), str(data_cfg.geometry)


def trust_run(run_dir: str | os.PathLike, out_of_scope_dir: str | os.PathLike = DEFAULT_OUT) -> dict[str, Any]:
    """:func:`fit_trust` on a finished fold run directory, with its fold's slices and the out-of-scope set."""
    parts, image_size, geometry = fold_parts(run_dir)
    return fit_trust(run_dir, parts, load_out_of_scope(ensure_built(out_of_scope_dir), image_size, geometry))


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="fold run directories of capsule_classifier/train.py")
    parser.add_argument("--out-of-scope", type=Path, default=DEFAULT_OUT, help="out-of-scope set folder")
    args = parser.parse_args(strip_debug_flag(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    for run in args.runs:
        print(f"{run}: {headline(trust_run(run, args.out_of_scope))}")


if __name__ == "__main__":
    main()
