"""Trust benchmark: calibration, out-of-scope detection and explanation maps of cross-validation folds.

For every finished fold run under ``RUNS`` (``summary.json`` + ``model.pt``, e.g. a ``scripts/cross_validate.sh``
``out=``), runs the post-hoc trust step (:mod:`capsule_classifier.trust`: it writes the temperature and the
detector into ``model.pt``) and reports per fold:

* ECE (15 bins) and Brier score on the test patients before and after calibration (fitted on validation);
* the AUROC of the in-scope test slices against the ``report`` part of each out-of-scope source, the share of
  each caught, and the in-scope false-reject rate on the test patients at the chosen threshold;
* the pointing game and the map mass inside the dilated tumour masks on the test slices, beside chance;
* with ``--external DIR`` (a ``<class>/<slices>`` folder of in-scope slices from elsewhere, e.g.
  ``python -m datasets.external_glioma``'s ``runs/external/glioma``): its share answered "out of scope" (false
  rejects of real tumour slices from other hospitals) and accuracy;
* with ``--candidates`` (default): the same out-of-scope numbers for each candidate score (the top probability
  and Mahalanobis distances on other layers), the measurement behind ``out_of_scope.FEATURE_LAYERS``.

Writes ``--out`` (JSON) and prints Markdown tables. Run from the repository root::

    python -m benchmarks.bench_trust runs/bench_generalisation/after --external runs/external/glioma
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from capsule_classifier import out_of_scope as scope
from capsule_classifier.calibration import calibrate
from capsule_classifier.deploy import ProbabilityModel, load_classifier
from capsule_classifier.evaluate import evaluate, load_labelled
from capsule_classifier.predict import Predictor
from capsule_classifier.report import find_summaries
from capsule_classifier.trust import (
    MODEL_FILE,
    fit_out_of_scope,
    fit_trust,
    fold_outputs,
    fold_parts,
    out_of_scope_report,
    trust_table,
)
from datasets.core import SliceSet
from datasets.out_of_scope_set import DEFAULT_OUT, SOURCES, OutOfScopeSet, ensure_built, load_out_of_scope
from experiment.atomic import atomic_write_json
from experiment.cli import reports_user_errors, strip_debug_flag

log = logging.getLogger("bench_trust")

CANDIDATE_LAYERS = {"capsnet": [("features.0",), ("features.1",), ("features.2",), ("features.3",), ("features.4",),
                                ("primary",), ("classes",)],
                    "resnet50": [("relu",), ("layer1",), ("layer2",), ("layer3",), ("layer4",)]}
"""Single layers compared with the deployed choice (``out_of_scope.FEATURE_LAYERS``)."""
MSP = "max_probability"


def bench_fold(run: Path, out_of_scope: dict[tuple[int, str], OutOfScopeSet], out_of_scope_dir: Path,
               external: Path | None, candidates: bool) -> dict[str, Any]:
    """Every number of the module docstring for the fold in ``run``."""
    parts, image_size, geometry = fold_parts(run)
    if (image_size, geometry) not in out_of_scope:
        out_of_scope[image_size, geometry] = load_out_of_scope(out_of_scope_dir, image_size, geometry)
    written = fit_trust(run, parts, out_of_scope[image_size, geometry])
    classifier, meta = load_classifier(run / MODEL_FILE)
    result: dict[str, Any] = {"run": str(run), "model": meta["model_name"], "fold": meta.get("fold"), **written}
    result["explanations"] = {k: v for k, v in written["explanations"].items() if k not in ("hits", "file_ids")}
    if external is not None:
        predictor = Predictor(run / MODEL_FILE)
        report = evaluate(predictor, load_labelled(external, predictor.class_names), str(run), str(external))
        result["external"] = {"data": str(external), "n": report["n_scored"], "accuracy": report["accuracy"],
                              **report["out_of_scope"]}
    if candidates:
        result["candidates"] = compare_scores(classifier, meta["model_name"], parts, out_of_scope[image_size, geometry])
    return result


def compare_scores(classifier: ProbabilityModel, model_name: str, parts: dict[str, SliceSet],
                   out_of_scope: OutOfScopeSet) -> dict[str, Any]:
    """Out-of-scope numbers of each candidate score, threshold chosen the deployed way."""
    choices = [*CANDIDATE_LAYERS[model_name], scope.FEATURE_LAYERS[model_name]]
    layers = sorted({name for choice in choices for name in choice})
    outputs = fold_outputs(classifier, parts, out_of_scope, layers)
    temperature = float(classifier.temperature)
    top = {name: 1.0 - calibrate(torch.from_numpy(p), temperature).numpy().max(axis=1)
           for name, p in outputs.probabilities.items()}
    oos_top = 1.0 - calibrate(torch.from_numpy(outputs.oos_probabilities), temperature).numpy().max(axis=1)
    threshold = scope.choose_threshold(top["val"], oos_top[out_of_scope.select("fit")])
    compared = {MSP: out_of_scope_report(top, oos_top, out_of_scope, threshold)}
    for choice in choices:
        compared["+".join(choice)] = fit_out_of_scope(outputs, parts, out_of_scope, choice)[1]
    return compared


def markdown(folds: list[dict[str, Any]]) -> str:
    """Tables: per fold, then per model the candidate scores averaged over its folds."""
    sources = [s for s in SOURCES if any(s in f["out_of_scope"]["sources"] for f in folds)]
    lines = trust_table(folds)
    for model in sorted({f["model"] for f in folds if "candidates" in f}):
        runs = [f["candidates"] for f in folds if f["model"] == model and "candidates" in f]
        deployed = "+".join(scope.FEATURE_LAYERS[model])
        lines += ["", f"{model}: candidate out-of-scope scores, mean over {len(runs)} fold(s) (AUROC on the report "
                      "part; test false rejects at each score's own threshold):", "",
                  "| score | test false rejects | " + " | ".join(f"AUROC {s}" for s in sources) + " |",
                  "|---" * (2 + len(sources)) + "|"]
        for name in runs[0]:
            rows = [run[name] for run in runs]
            cells = [np.mean([r["sources"][s]["auroc"] for r in rows if s in r["sources"]]) for s in sources]
            label = f"{name} (deployed)" if name == deployed else name
            lines.append(f"| {label} | {np.mean([r['test_false_reject'] for r in rows]):.3f} | "
                         + " | ".join(f"{v:.3f}" for v in cells) + " |")
    return "\n".join(lines)


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="fold run directories or folders holding them")
    parser.add_argument("--out-of-scope", type=Path, default=DEFAULT_OUT, help="out-of-scope set (built if missing)")
    parser.add_argument("--external", type=Path, help="in-scope slices from elsewhere: <class>/<slices> folders")
    parser.add_argument("--candidates", action=argparse.BooleanOptionalAction, default=True,
                        help="also compare candidate out-of-scope scores")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_trust/trust.json"), help="JSON results")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(strip_debug_flag(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    torch.set_num_threads(args.threads)
    runs = [path.parent for path, _ in find_summaries(args.runs)]
    ensure_built(args.out_of_scope)
    sets: dict[tuple[int, str], OutOfScopeSet] = {}
    folds = [bench_fold(run, sets, args.out_of_scope, args.external, args.candidates) for run in runs]
    atomic_write_json(args.out, {"folds": folds, "out_of_scope_set": str(args.out_of_scope)})
    print(markdown(folds))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
