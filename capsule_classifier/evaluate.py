"""Score a classifier on labelled slices from anywhere: an external check anyone can run.

    python capsule_classifier/evaluate.py [MODEL] DATA [--out DIR]

``MODEL`` is a ``model.pt`` or ``model.onnx``, loaded as ``predict.py`` loads it (without it, the released model
that ``predict.py`` uses). ``DATA`` is either a folder tree ``DATA/<class>/<slices>`` (class folders matched to the
model's class names case-insensitively, searched recursively; other folders are reported as out of set and not
scored) or a CSV with columns ``path,label`` (paths relative to the CSV's folder, never outside it; other labels
are out of set). Slices are read and preprocessed exactly as ``predict.py`` reads them; files that cannot be read
are listed, not scored.

Writes ``report.md``, ``report.json`` (metrics and every prediction) and ``confusion.png`` to ``--out``
(default ``runs/evaluate/<DATA name>``): accuracy, macro-F1, per-class recall and the confusion matrix
(``experiment.metrics``). Classes of the model that the data lacks (a glioma-only check, say) get no recall:
accuracy and macro-F1 cover the classes present, and the report names the absent ones. A model with an
out-of-scope detector answers "out of scope" for some slices: they are counted (for in-scope data, each is a
false reject), the metrics score the top class of every slice, and the accuracy of the slices answered with
a class is given beside them. Exit code 2 when nothing could be scored; ``--debug`` shows the traceback of an
error.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from capsule_classifier.predict import OUT_OF_SCOPE, Predictor, model_and_inputs
from datasets.core import DataError, check_allocation
from datasets.user_slices import SUFFIXES, InputFile, find_slices
from experiment.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from experiment.cli import reports_user_errors, strip_debug_flag
from experiment.metrics import classification_metrics

log = logging.getLogger(__name__)

LISTED = 20
"""Unscored files listed by name in the Markdown report (all are in the JSON)."""


@dataclass
class LabelledSet:
    """Slice files with class indices, plus what is not scored: ``out_of_set`` (folder or label -> files) and
    ``unscored`` ``(name, reason)`` pairs."""

    files: list[InputFile] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    out_of_set: dict[str, int] = field(default_factory=dict)
    unscored: list[tuple[str, str]] = field(default_factory=list)


def load_labelled(data: str | os.PathLike, class_names: Sequence[str]) -> LabelledSet:
    """The labelled slices of a ``<class>/<slices>`` folder tree or a ``path,label`` CSV.

    Raises:
        DataError: ``data`` missing, not a folder or CSV, a CSV without ``path`` and ``label`` columns.
    """
    data = Path(data)
    lookup = {name.lower(): index for index, name in enumerate(class_names)}
    if data.is_dir():
        return _from_folders(data, lookup)
    if data.is_file() and data.suffix.lower() == ".csv":
        return _from_csv(data, lookup)
    raise DataError(f"{data}: expected a folder of <class>/<slices> or a CSV file with columns path,label")


def _from_folders(root: Path, lookup: dict[str, int]) -> LabelledSet:
    found = LabelledSet()
    for entry in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        if not entry.is_dir() or entry.is_symlink():
            if entry.suffix.lower() in SUFFIXES:  # other files beside the class folders (a README) are not data
                found.unscored.append((entry.name, "a slice outside the class folders"))
            continue
        scan = find_slices([entry])
        if entry.name.lower() not in lookup:
            found.out_of_set[entry.name] = len(scan.files)
            continue
        found.files += [InputFile(f.path, f"{entry.name}/{f.name}") for f in scan.files]
        found.labels += [lookup[entry.name.lower()]] * len(scan.files)
        found.unscored += [(f"{entry.name}/{name}", reason) for name, reason in scan.skipped]
    return found


def _from_csv(table: Path, lookup: dict[str, int]) -> LabelledSet:
    check_allocation(table.stat().st_size, f"{table}: CSV")
    try:
        with open(table, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{table}: not a readable UTF-8 CSV ({error})") from error
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DataError(f"{table}: expected a CSV with columns path,label")
    found, inside = LabelledSet(), table.parent.resolve()
    out_of_set: Counter[str] = Counter()
    for line, row in enumerate(rows, start=2):
        name, label = (row["path"] or "").strip(), (row["label"] or "").strip()
        path = table.parent / name
        if label.lower() not in lookup:
            out_of_set[label] += 1
        elif not name or Path(name).is_absolute() or not path.resolve().is_relative_to(inside):
            found.unscored.append((name, f"{table}:{line}: outside the CSV's folder; not read"))
        elif not path.is_file():
            found.unscored.append((name, f"{table}:{line}: file not found"))
        else:
            found.files.append(InputFile(path, name))
            found.labels.append(lookup[label.lower()])
    found.out_of_set = dict(sorted(out_of_set.items()))
    return found


def evaluate(predictor: Predictor, data: LabelledSet, model: str, source: str) -> dict[str, Any]:
    """Predict every file of ``data`` and score the readable ones; return the report.

    Raises:
        DataError: no file could be scored.
    """
    names = predictor.class_names
    records = predictor.predict_files(data.files, show_progress=True)
    scored = [(record, label) for record, label in zip(records, data.labels, strict=True) if "error" not in record]
    unscored = data.unscored + [(record["path"], record["error"]) for record in records if "error" in record]
    if not scored:
        first = f"; first: {unscored[0][0]}: {unscored[0][1]}" if unscored else ""
        raise DataError(f"nothing to score in {source}: none of {len(data.files)} labelled slice file(s) could be "
                        f"read, {sum(data.out_of_set.values())} out of set{first}")
    top = [int(np.argmax([record["probabilities"][name] for name in names])) for record, _ in scored]
    truth = [label for _, label in scored]
    metrics = classification_metrics(truth, top, names)
    answered = [record["prediction"] != OUT_OF_SCOPE for record, _ in scored]
    present = [name for name in names if metrics["per_class"][name]["support"] > 0]
    per_class = {name: metrics["per_class"][name] for name in present}
    return {
        "model": model, "data": source, "class_names": names, "n_scored": metrics["n"],
        "accuracy": metrics["accuracy"], "macro_f1": float(np.mean([per_class[n]["f1"] for n in present])),
        "classes_present": present, "classes_absent": [name for name in names if name not in present],
        "recall": {name: per_class[name]["recall"] for name in present}, "per_class": per_class,
        "confusion_matrix": [metrics["confusion_matrix"][names.index(name)] for name in present],
        "out_of_scope": {"threshold": predictor.threshold, "answered_out_of_scope": answered.count(False),
                         "rate": answered.count(False) / len(answered),
                         "accuracy_of_answered": float(np.mean([t == p for t, p, a in zip(truth, top, answered,
                                                                                          strict=True) if a]))
                         if any(answered) else None},
        "out_of_set": data.out_of_set, "unscored": [{"path": p, "reason": r} for p, r in unscored],
        "warnings": [{"path": record["path"], "warnings": record["warnings"]}
                     for record, _ in scored if record["warnings"]],
        "predictions": [{"path": record["path"], "label": names[label], "prediction": record["prediction"],
                         "top_class": names[index], "probabilities": record["probabilities"],
                         "out_of_scope_score": record["out_of_scope_score"]}
                        for (record, label), index in zip(scored, top, strict=True)],
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: headline metrics, per-class recall, confusion matrix, what was not scored."""
    names, present, absent = report["class_names"], report["classes_present"], report["classes_absent"]
    lines = [f"# Evaluation of `{report['model']}` on `{report['data']}`", "",
             f"{report['n_scored']} slices scored, of the classes {', '.join(present)}."]
    if absent:
        lines.append(f"Absent from the data: {', '.join(absent)}. They get no recall; accuracy and macro-F1 "
                     f"cover the {len(present)} class(es) present.")
    lines += ["", "| metric | value |", "|---|---|", f"| accuracy | {report['accuracy']:.4f} |",
              f"| macro-F1 ({len(present)} class(es) present) | {report['macro_f1']:.4f} |",
              "", "| class | recall | F1 | slices |", "|---|---|---|---|"]
    lines += [f"| {name} | {stats['recall']:.4f} | {stats['f1']:.4f} | {stats['support']} |"
              for name, stats in report["per_class"].items()]
    lines += ["", "Confusion matrix (rows true, columns predicted):", "",
              "| true \\ predicted | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(map(str, row)) + " |"
              for name, row in zip(present, report["confusion_matrix"], strict=True)]
    scope = report["out_of_scope"]
    if scope["threshold"] is not None:
        answered = "n/a" if scope["accuracy_of_answered"] is None else f"{scope['accuracy_of_answered']:.4f}"
        lines += ["", f"Answered \"{OUT_OF_SCOPE}\": {scope['answered_out_of_scope']} of {report['n_scored']} slices "
                      f"({scope['rate']:.1%}; score above {scope['threshold']:.4g}); for in-scope data each is a false "
                      f"reject. The metrics above score every slice's top class; accuracy of the slices answered "
                      f"with a class: {answered}."]
    if report["out_of_set"]:
        lines += ["", "Out of set (not scored): " + ", ".join(f"`{k}` ({v} files)"
                                                              for k, v in report["out_of_set"].items()) + "."]
    if report["unscored"]:
        lines += ["", f"Not scored: {len(report['unscored'])} file(s)."]
        lines += [f"- `{item['path']}`: {item['reason']}" for item in report["unscored"][:LISTED]]
    if report["warnings"]:
        lines += ["", f"{len(report['warnings'])} scored slice(s) carry a warning (tiny or constant images); "
                      "see report.json."]
    return "\n".join([*lines, "", "![confusion](confusion.png)", ""])


def confusion_figure(matrix: Sequence[Sequence[int]], rows: Sequence[str], columns: Sequence[str],
                     title: str) -> Any:
    """A confusion-matrix heatmap (rows true, columns predicted) with counts in the cells."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.6, 1.6 + 0.8 * len(rows)), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues", aspect="auto")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            axes.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    axes.set(xticks=range(len(columns)), yticks=range(len(rows)), xticklabels=columns, yticklabels=rows,
             xlabel="predicted", ylabel="true", title=title)
    axes.title.set_fontsize(8)
    figure.colorbar(image, ax=axes, shrink=0.8)
    return figure


def save_png(path: str | os.PathLike, figure: Any) -> Path:
    """Write a matplotlib figure to ``path`` as PNG, atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def write_evaluation(report: dict[str, Any], out: str | os.PathLike) -> list[Path]:
    """Write ``report.md``, ``report.json`` and ``confusion.png`` to ``out``; return their paths."""
    out = Path(out)
    atomic_write_text(out / "report.md", markdown(report))
    atomic_write_json(out / "report.json", report)
    title = f"{Path(report['model']).name} on {Path(report['data']).name}: accuracy {report['accuracy']:.3f}"
    figure = confusion_figure(report["confusion_matrix"], report["classes_present"], report["class_names"], title)
    return [out / "report.md", out / "report.json", save_png(out / "confusion.png", figure)]


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="[MODEL] DATA",
                        help="model.pt or model.onnx (default: the released model), then a folder of "
                             "<class>/<slices> or a CSV with columns path,label")
    parser.add_argument("--out", type=Path, help="output folder (default runs/evaluate/<DATA name>)")
    args = parser.parse_args(strip_debug_flag(sys.argv[1:] if argv is None else argv))
    if len(args.paths) > 2:
        parser.error(f"expected [MODEL] DATA, got {len(args.paths)} paths")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    model, rest = model_and_inputs(args.paths)
    if len(rest) != 1:
        parser.error(f"expected [MODEL] DATA, got {' '.join(args.paths)}")
    source = Path(rest[0])
    predictor = Predictor(model)
    data = load_labelled(source, predictor.class_names)
    for name, count in data.out_of_set.items():
        log.warning("out of set, not scored: %s (%d files)", name, count)
    report = evaluate(predictor, data, str(model), str(source))
    for item in report["unscored"]:
        log.warning("not scored: %s: %s", item["path"], item["reason"])
    paths = write_evaluation(report, args.out or Path("runs/evaluate") / source.stem)
    print(markdown(report))
    print(f"wrote {', '.join(map(str, paths))}")


if __name__ == "__main__":
    main()
