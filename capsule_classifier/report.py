"""Cross-validation report over fold run directories of ``capsule_classifier/train.py``.

    python capsule_classifier/report.py runs/classifier/capsnet runs/classifier/resnet50 --out runs/classifier/report

Each ``RUN`` is a fold directory (holding ``summary.json``) or a folder searched for them. Runs (one per fold and
seed) are grouped by setting (model, tag, split, image size); per group the report gives mean ± sample std over
runs (folds x seeds) of test accuracy and macro-F1, per-class precision/recall/F1, the summed confusion matrix
and parameter counts, and a comparison table across groups. The study table adds, per group, the trust step's
ECE after calibration, out-of-scope AUROC on healthy brain slices and pointing game (from each summary), the
external glioma recall (``<run>/external_glioma/report.json`` of ``capsule_classifier/evaluate.py``) and wall
times (the generator's from ``<run>/study.json`` of ``benchmarks/study.py``); a run without one shows ``n/a``.
Settings are compared run by run on the same test patients (paired by fold and seed), which removes the
fold-to-fold spread of difficulty from the difference: synthetic pretraining against training from scratch and
against the compute-matched control (tag ``control``), that control against training from scratch, and every
model against the ResNet50 baseline under the same tag. Folds that went through the trust step
(:mod:`capsule_classifier.trust`) also give calibration (ECE, Brier score before and after, a reliability diagram
pooled over folds), out-of-scope detection (test false rejects, AUROC per out-of-scope source) and the
explanation maps' pointing game. Written atomically to ``--out``: ``report.md``, ``report.json``,
``confusion-<group>.png``, ``folds-<group>.png`` and ``reliability-<group>.png``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

from capsule_classifier import BASELINE, BASELINE_RATIO
from capsule_classifier.calibration import reliability_figure
from capsule_classifier.trust import aggregate_lines, aggregate_trust, read_trust
from experiment.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, remove_temporaries
from experiment.cli import reports_user_errors, strip_debug_flag
from experiment.errors import UserError
from experiment.metrics import aggregate_folds, mean_std
from experiment.rundir import SUMMARY_FILE

MAX_SUMMARY_BYTES = 16 << 20
"""A fold summary is a few KB; anything beyond this is not one and is not read."""
_STATS = ("precision", "recall", "f1")
STUDY_FILE = "study.json"
"""Beside a study run's summary (``benchmarks/study.py``): its study row, the compute-matched control's epochs and
rule, and the wall time of the generator it pretrained from."""
EXTERNAL_CHECK = "external_glioma"
"""The folder in a run directory holding ``capsule_classifier/evaluate.py``'s report on the external glioma check."""
STUDY_METRICS = {"test_ece_after": "ECE after calibration", "auroc_healthy_brain": "out-of-scope AUROC (healthy brain)",
                 "pointing_game": "pointing game", "external_glioma_recall": "external glioma recall",
                 "wall_time_s": "classifier wall time / run", "generator_wall_time_s": "generator wall time / run"}
"""Per-run numbers of the study table beyond the test metrics (key -> column title); ``n/a`` where a run lacks
them."""
DURATIONS = ("wall_time_s", "generator_wall_time_s")


class ReportError(UserError, ValueError):
    """No fold summaries, or malformed or inconsistent ones (the message names the files)."""


def find_summaries(runs: Sequence[str | os.PathLike]) -> list[tuple[Path, dict[str, Any]]]:
    """``(path, summary)`` of every finished fold under ``runs`` (fold dirs or folders holding them).

    Raises:
        ReportError: a missing run path, no summary at all, or one that is unreadable or lacks what the report
            reads (see :func:`summary_problem`).
    """
    found: dict[Path, dict[str, Any]] = {}
    for run in map(Path, runs):
        if not run.exists():
            raise ReportError(f"run path does not exist: {run}")
        paths = [run / SUMMARY_FILE] if (run / SUMMARY_FILE).is_file() else sorted(run.rglob(SUMMARY_FILE))
        for path in paths:
            found[path.resolve()] = _read_summary(path)
    if not found:
        raise ReportError(f"no {SUMMARY_FILE} found under {[str(r) for r in runs]}")
    return sorted(found.items())


def _read_json(path: Path) -> Any:
    """The JSON value in ``path``, reading at most :data:`MAX_SUMMARY_BYTES`.

    Raises:
        ReportError: unreadable, too big, or not UTF-8 JSON (naming the file).
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SUMMARY_BYTES + 1)
    except OSError as error:
        raise ReportError(f"{path} cannot be read: {error}") from error
    if len(data) > MAX_SUMMARY_BYTES:
        raise ReportError(f"{path} is over {MAX_SUMMARY_BYTES} bytes: not a fold summary")
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as error:  # not UTF-8, not JSON
        raise ReportError(f"{path} is not valid JSON: {error}") from error


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (at most :data:`MAX_SUMMARY_BYTES`), or ``{}`` when it is missing, unreadable,
    too big or not an object: for optional records beside a run."""
    try:
        value = _read_json(path)
    except ReportError:
        return {}
    return value if isinstance(value, dict) else {}


def _read_summary(path: Path) -> dict[str, Any]:
    summary = _read_json(path)
    problem = summary_problem(summary)
    if problem:
        raise ReportError(f"{path} is not a classifier fold summary: {problem}")
    return summary


def summary_problem(summary: Any) -> str | None:
    """What keeps ``summary`` from being a fold summary the report can read, or ``None``: it needs ``model``,
    an integer ``fold``, ``class_names`` and ``test`` metrics (accuracy, macro-F1, per-class precision, recall and
    F1, a square confusion matrix of counts)."""
    if not isinstance(summary, dict) or not {"model", "fold", "test", "class_names"} <= summary.keys():
        return "needs model, fold, test and class_names"
    names, test = summary["class_names"], summary["test"]
    if not isinstance(summary["model"], str) or not _integer(summary["fold"]) or not _integer(summary.get("seed", 0)):
        return "model must be a name, fold an integer and seed (when given) an integer"
    if not (isinstance(names, list) and names and all(isinstance(name, str) for name in names)):
        return "class_names must be a list of names"
    if not (isinstance(test, dict) and all(_number(test.get(key)) for key in ("accuracy", "macro_f1"))):
        return "test must hold numbers accuracy and macro_f1"
    per_class, matrix = test.get("per_class"), test.get("confusion_matrix")
    if not (isinstance(per_class, dict) and set(per_class) == set(names) and all(
            isinstance(row, dict) and all(_number(row.get(stat)) for stat in _STATS) for row in per_class.values())):
        return "test.per_class must give precision, recall and f1 of every class"
    if not (isinstance(matrix, list) and len(matrix) == len(names) and all(
            isinstance(row, list) and len(row) == len(names) and all(map(_integer, row)) for row in matrix)):
        return f"test.confusion_matrix must be {len(names)}x{len(names)} counts"
    if not (isinstance(summary.get("parameters", {}), dict) and _number(summary.get("wall_time_s", 0.0) or 0.0)):
        return "parameters must be an object and wall_time_s a number"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def group_key(summary: dict[str, Any]) -> str:
    """The setting a fold belongs to, e.g. ``capsnet/scratch/grouped-k7/128px``."""
    split = f"{summary.get('split', '?')}-k{summary.get('k', '?')}"
    return f"{summary['model']}/{summary.get('tag', '?')}/{split}/{summary.get('image_size', '?')}px"


def run_key(summary: dict[str, Any]) -> tuple[int, Any]:
    """``(fold, seed)``: what identifies a run within its setting and pairs it with another setting's run."""
    return summary["fold"], summary.get("seed")


def run_numbers(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The :data:`STUDY_METRICS` of one run (``None`` where missing), its study row and control epochs."""
    trust = summary.get("trust") if isinstance(summary.get("trust"), dict) else {}
    external = read_json_object(run_dir / EXTERNAL_CHECK / "report.json")
    study = read_json_object(run_dir / STUDY_FILE)
    control = study.get("control") if isinstance(study.get("control"), dict) else {}
    recall = external.get("recall") if isinstance(external.get("recall"), dict) else {}
    values = {"test_ece_after": trust.get("test_ece_after"), "auroc_healthy_brain": trust.get("auroc_healthy_brain"),
              "pointing_game": trust.get("pointing_game"), "external_glioma_recall": recall.get("glioma"),
              "wall_time_s": summary.get("wall_time_s"), "generator_wall_time_s": study.get("generator_wall_time_s")}
    return {**{key: float(value) if _number(value) else None for key, value in values.items()},
            "row": study.get("row"), "control_epochs": control.get("train_epochs"), "control_rule": control.get("rule")}


def build_report(summaries: Sequence[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """Aggregate fold summaries per setting.

    Raises:
        ReportError: the same fold twice in one setting, or folds of one setting with other class names.
    """
    groups: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path, summary in summaries:
        groups.setdefault(group_key(summary), []).append((path, summary))
    report: dict[str, Any] = {"groups": {}}
    for key, members in sorted(groups.items()):
        runs = [run_key(s) for _, s in members]
        repeated = sorted({run for run in runs if runs.count(run) > 1}, key=str)
        if repeated:
            raise ReportError(f"setting {key}: fold(s) {sorted({f for f, _ in repeated})} appear more than once "
                              f"with the same seed: {[str(p) for p, s in members if run_key(s) in repeated]}")
        members.sort(key=lambda item: (-1 if item[1].get("seed") is None else item[1]["seed"], item[1]["fold"]))
        first = members[0][1]
        class_names = list(first["class_names"])  # JSON objects lose order; the list keeps index order
        other = [str(p) for p, s in members if s["class_names"] != class_names]
        if other:
            raise ReportError(f"setting {key}: {other} name classes other than {class_names} "
                              f"({members[0][0]}); folds of one setting must share them")
        report["groups"][key] = {
            "model": first["model"], "tag": first.get("tag"), "split": first.get("split"), "k": first.get("k"),
            "image_size": first.get("image_size"), "folds": [s["fold"] for _, s in members],
            "seeds": [s.get("seed") for _, s in members],
            "runs": [str(p.parent) for p, _ in members], "class_names": class_names,
            "parameters": first.get("parameters", {}),
            "per_fold": [{"fold": s["fold"], "seed": s.get("seed"), "accuracy": s["test"]["accuracy"],
                          "macro_f1": s["test"]["macro_f1"], "n": s["test"].get("n"), **run_numbers(p.parent, s)}
                         for p, s in members],
            "aggregate": aggregate_folds([s["test"] for _, s in members]),
        }
        per_run = report["groups"][key]["per_fold"]
        report["groups"][key]["study"] = {name: _stat([run[name] for run in per_run]) for name in STUDY_METRICS}
        trust = [read_trust(path.parent) for path, _ in members]
        if all(t is not None for t in trust):
            report["groups"][key]["trust"] = aggregate_trust(
                [{**t, "fold": s["fold"]} for t, (_, s) in zip(trust, members, strict=True)])
    for name, (axis, baseline, compared, _) in PAIRINGS.items():
        report[name] = paired_comparisons(report["groups"], axis, baseline, compared)
    return report


def _stat(values: Sequence[float | None]) -> dict[str, Any] | None:
    """Mean ± sample std of the values present, with their count ``n``; ``None`` when none is."""
    present = [value for value in values if value is not None]
    return {**mean_std(present), "n": len(present)} if present else None


# Report key -> (the one field in which a setting differs from its baseline, the baseline's value there, the
# values compared with it (None: any), the Markdown title).
PAIRINGS = {
    "paired": ("tag", "scratch", ("synthetic",), "Pretrained against trained from scratch, paired by fold and seed"),
    "paired_control": ("tag", "control", ("synthetic",),
                       "Pretrained against the compute-matched control, paired by fold and seed"),
    "paired_control_scratch": ("tag", "scratch", ("control",),
                               "Compute-matched control against trained from scratch, paired by fold and seed"),
    "paired_models": ("model", BASELINE, None, "Models against the ResNet50 baseline, paired by fold and seed"),
}


def paired_comparisons(groups: dict[str, dict[str, Any]], axis: str = "tag", baseline: str = "scratch",
                       compared: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Per-run test differences (setting minus baseline) of settings that differ from a baseline setting
    only in ``axis`` (``"tag"`` or ``"model"``), whose value there is ``baseline`` (and the setting's is in
    ``compared``, when given).

    The other fields (model or tag, split, k, image size) must agree; runs are paired by (fold, seed) and only
    pairs present in both count. Per metric: the differences, their mean and sample std, how many pairs got
    better / worse / stayed equal, and the two-sided Wilcoxon signed-rank p-value (``None`` with fewer than two
    non-zero differences).
    """
    def setting(group: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(group[field] for field in ("model", "tag", "split", "k", "image_size") if field != axis)

    baselines = {setting(g): key for key, g in groups.items() if g[axis] == baseline}
    comparisons = []
    for key, group in groups.items():
        base_key = baselines.get(setting(group))
        if group[axis] == baseline or base_key is None or (compared is not None and group[axis] not in compared):
            continue
        base = {run_key(f): f for f in groups[base_key]["per_fold"]}
        pairs = [(f, base[run_key(f)]) for f in group["per_fold"] if run_key(f) in base]
        if not pairs:
            continue
        comparison: dict[str, Any] = {"setting": key, "baseline": base_key, "folds": [f["fold"] for f, _ in pairs],
                                      "seeds": [f.get("seed") for f, _ in pairs]}
        for metric in ("accuracy", "macro_f1"):
            diffs = np.array([f[metric] - b[metric] for f, b in pairs])
            nonzero = diffs[np.abs(diffs) > 1e-12]
            comparison[metric] = {
                "differences": diffs.tolist(), "mean": float(diffs.mean()),
                "std": float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0,
                "better": int((nonzero > 0).sum()), "worse": int((nonzero < 0).sum()),
                "equal": int(len(diffs) - len(nonzero)),
                "wilcoxon_p": float(wilcoxon(nonzero).pvalue) if len(nonzero) >= 2 else None,
            }
        comparisons.append(comparison)
    return comparisons


def _paired_lines(title: str, pairs: list[dict[str, Any]]) -> list[str]:
    """One Markdown section of paired comparisons: the table, then the per-fold differences."""
    lines = ["", f"## {title}", "",
             "Differences (setting minus baseline) on the same test patients, one pair per fold and seed, mean ± "
             "sample std; pairs better / worse / equal; two-sided Wilcoxon signed-rank p (pairs of one fold share "
             "its test patients, so with several seeds the pairs are not independent and p is optimistic).", "",
             "| setting | baseline | pairs | Δ accuracy | Δ macro-F1 | macro-F1 better / worse / equal "
             "| Wilcoxon p (macro-F1) |", "|---|---|---|---|---|---|---|"]
    for pair in pairs:
        f1 = pair["macro_f1"]
        p_value = "n/a" if f1["wilcoxon_p"] is None else f"{f1['wilcoxon_p']:.3f}"
        lines.append(f"| {pair['setting']} | {pair['baseline']} | {len(pair['folds'])} | "
                     f"{_pm(pair['accuracy'], signed=True)} | {_pm(f1, signed=True)} | "
                     f"{f1['better']} / {f1['worse']} / {f1['equal']} | {p_value} |")
    for pair in pairs:
        labels = _run_labels(pair["folds"], pair.get("seeds") or [None] * len(pair["folds"]))
        per_fold = ", ".join(f"{label}: {a:+.4f} / {f:+.4f}" for label, a, f in zip(
            labels, pair["accuracy"]["differences"], pair["macro_f1"]["differences"], strict=True))
        lines += ["", f"{pair['setting']}, per fold (Δ accuracy / Δ macro-F1): {per_fold}."]
    return lines


def _run_labels(folds: Sequence[int], seeds: Sequence[Any]) -> list[str]:
    """``"3"`` per run, or ``"3/s1"`` (fold 3, seed 1) when the runs have more than one seed."""
    several = len(set(seeds)) > 1
    return [f"{fold}/s{seed}" if several else str(fold) for fold, seed in zip(folds, seeds, strict=True)]


def study_lines(groups: dict[str, dict[str, Any]]) -> list[str]:
    """The study table: per setting, mean ± sample std over runs (folds x seeds) of the test metrics and
    :data:`STUDY_METRICS`; ``n/a`` where no run has a number, ``(n of N)`` where only some do."""
    names = next(iter(groups.values()))["class_names"] if groups else []
    lines = ["", "## Study table", "",
             "Mean ± sample std over runs (folds x seeds), test patients; ECE after temperature scaling (fitted on "
             "validation); out-of-scope AUROC of in-scope test slices against healthy brain slices; pointing game of "
             "the explanation maps; recall on the external glioma check; wall time per run (the generator's: once "
             "per fold and seed, shared by the settings pretrained on it).", "",
             "| setting | runs (folds x seeds) | accuracy | macro-F1 | " + " | ".join(f"F1 {n}" for n in names) + " | "
             + " | ".join(STUDY_METRICS.values()) + " |", "|---" * (4 + len(names) + len(STUDY_METRICS)) + "|"]
    for key, group in groups.items():
        agg, runs = group["aggregate"], len(group["per_fold"])
        shape = f"{runs} ({len(set(group['folds']))} x {len(set(group['seeds']))})"
        cells = [_pm(agg["accuracy"], digits=3), _pm(agg["macro_f1"], digits=3),
                 *[_pm(agg["per_class"][n]["f1"], digits=3) if n in agg["per_class"] else "n/a" for n in names],
                 *[_study_cell(group["study"][name], runs, name in DURATIONS) for name in STUDY_METRICS]]
        lines.append(f"| {key} | {shape} | " + " | ".join(cells) + " |")
    rules = sorted({run["control_rule"] for g in groups.values() for run in g["per_fold"] if run["control_rule"]})
    for key, group in groups.items():
        epochs = [run["control_epochs"] for run in group["per_fold"] if run["control_epochs"] is not None]
        if epochs:
            lines += ["", f"{key}: training epochs per run (fold order) {epochs}."]
    lines += [f"Compute-matched control: {rule}." for rule in rules]
    return lines


def _study_cell(stat: dict[str, Any] | None, runs: int, duration: bool) -> str:
    if stat is None:
        return "n/a"
    text = f"{_duration(stat['mean'])} ± {_duration(stat['std'])}" if duration else _pm(stat, digits=3)
    return text if stat["n"] == runs else f"{text} ({stat['n']} of {runs})"


def markdown(report: dict[str, Any], details: bool = True) -> str:
    """The report as Markdown: comparison table, paired comparisons, then (``details``) per-setting details."""
    lines = ["# Cross-validation report", "", "Test metrics per run (fold and seed), mean ± sample std over runs.", "",
             "| setting | runs | accuracy | macro-F1 | parameters (inference / training) | ResNet50 / model "
             "| classifier wall time (sum of runs) |",
             "|---|---|---|---|---|---|---|"]
    for key, group in report["groups"].items():
        agg, params = group["aggregate"], group["parameters"]
        inference = params.get("model_without_decoder", params.get("model"))
        lines.append(f"| {key} | {len(group['folds'])} | {_pm(agg['accuracy'])} | {_pm(agg['macro_f1'])} | "
                     f"{_count(inference)} / {_count(params.get('model'))} | "
                     f"{params.get(BASELINE_RATIO, '?')} | "
                     f"{_duration(sum(f['wall_time_s'] or 0.0 for f in group['per_fold']))} |")
    lines += study_lines(report["groups"])
    for name, (_, _, _, title) in PAIRINGS.items():
        if report.get(name):
            lines += _paired_lines(title, report[name])
    trusted = {key: group["trust"] for key, group in report["groups"].items() if "trust" in group}
    if trusted:
        lines += ["", "## Calibration, out of scope and explanation maps", "",
                  "Test patients, mean ± sample std over folds: temperature fitted on validation, ECE (15 bins) and "
                  "Brier score before and after; share of in-scope test slices rejected as out of scope; AUROC of "
                  "in-scope test slices against each out-of-scope source; Grad-CAM peak inside the tumour (pointing "
                  "game) and map mass inside the dilated mask.", "", *aggregate_lines(trusted)]
    for key, group in report["groups"].items() if details else ():
        agg = group["aggregate"]
        names = group["class_names"]
        lines += ["", f"## {key}", "", f"Folds {group['folds']}, seeds {group['seeds']}; parameters "
                  f"{group['parameters']}.", "",
                  "| fold | seed | accuracy | macro-F1 | test slices | wall time |", "|---|---|---|---|---|---|"]
        lines += [f"| {f['fold']} | {f['seed']} | {f['accuracy']:.4f} | {f['macro_f1']:.4f} | {f['n']} | "
                  f"{_duration(f['wall_time_s'] or 0.0)} |" for f in group["per_fold"]]
        lines += ["", "| class | precision | recall | F1 |", "|---|---|---|---|"]
        lines += [f"| {name} | {_pm(agg['per_class'][name]['precision'])} | {_pm(agg['per_class'][name]['recall'])} "
                  f"| {_pm(agg['per_class'][name]['f1'])} |" for name in names]
        lines += ["", "Summed confusion matrix (rows true, columns predicted):", "",
                  "| true \\ predicted | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(str(v) for v in row) + " |"
                  for name, row in zip(names, agg["confusion_matrix"], strict=True)]
        slug = _slug(key)
        lines += ["", f"![confusion](confusion-{slug}.png) ![folds](folds-{slug}.png)"
                  + (f" ![reliability](reliability-{slug}.png)" if "trust" in group else "")]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: str | os.PathLike) -> list[Path]:
    """Write Markdown, JSON and the PNG plots to ``out`` (first removing what killed writes left there); return
    the written paths."""
    out = Path(out)
    if out.is_dir():
        remove_temporaries(out)
    written = [out / "report.md", out / "report.json"]
    atomic_write_text(written[0], markdown(report))
    atomic_write_json(written[1], report)
    for key, group in report["groups"].items():
        slug = _slug(key)
        written.append(_save_png(out / f"confusion-{slug}.png", _confusion_figure(key, group)))
        written.append(_save_png(out / f"folds-{slug}.png", _folds_figure(key, group)))
        if "trust" in group:
            pooled = group["trust"]["test_reliability"]
            curves = {f"test {stage}": {"reliability": pooled[stage], "ece": pooled[stage]["ece"]} for stage in pooled}
            figure = reliability_figure(curves, f"{key}: test slices of {len(group['folds'])} folds")
            written.append(_save_png(out / f"reliability-{slug}.png", figure))
    return written


def _confusion_figure(key: str, group: dict[str, Any]) -> Any:
    from matplotlib.figure import Figure

    matrix, names = group["aggregate"]["confusion_matrix"], group["class_names"]
    figure = Figure(figsize=(4.6, 4.0), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            axes.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    axes.set(xticks=range(len(names)), yticks=range(len(names)), xticklabels=names, yticklabels=names,
             xlabel="predicted", ylabel="true", title=f"{key}\nsummed over {len(group['folds'])} folds")
    axes.title.set_fontsize(8)
    figure.colorbar(image, ax=axes, shrink=0.8)
    return figure


def _folds_figure(key: str, group: dict[str, Any]) -> Any:
    from matplotlib.figure import Figure

    folds = group["per_fold"]
    positions = range(len(folds))
    figure = Figure(figsize=(max(4.0, 0.7 * len(folds) + 2), 3.2), layout="constrained")
    axes = figure.subplots()
    axes.bar([p - 0.2 for p in positions], [f["accuracy"] for f in folds], width=0.4, label="accuracy")
    axes.bar([p + 0.2 for p in positions], [f["macro_f1"] for f in folds], width=0.4, label="macro-F1")
    axes.set(xticks=list(positions), xticklabels=_run_labels(group["folds"], group["seeds"]), xlabel="fold",
             ylim=(0, 1), title=key)
    axes.title.set_fontsize(8)
    axes.legend(loc="lower right", fontsize=8)
    return figure


def _save_png(path: Path, figure: Any) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _pm(stat: dict[str, float], signed: bool = False, digits: int = 4) -> str:
    """``mean ± std``; ``signed`` writes the mean's sign (for differences)."""
    return f"{stat['mean']:{'+' if signed else ''}.{digits}f} ± {stat['std']:.{digits}f}"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _duration(seconds: float) -> str:
    """``1h 02m`` / ``6m 12s``."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m {secs:02d}s"


def _slug(key: str) -> str:
    return key.replace("/", "_")


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="fold run directories or folders holding them")
    parser.add_argument("--out", type=Path, default=Path("runs/classifier/report"), help="output folder")
    args = parser.parse_args(strip_debug_flag(sys.argv[1:] if argv is None else argv))
    report = build_report(find_summaries(args.runs))
    try:
        paths = write_report(report, args.out)
    except OSError as error:
        raise ReportError(f"cannot write the report to {args.out}: {error}") from error
    print(markdown(report, details=False))
    print(f"wrote {', '.join(str(p) for p in paths)}")


if __name__ == "__main__":
    main()
