"""Classification metrics (scikit-learn) and cross-validation aggregation."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
) -> dict:
    """Accuracy, macro precision/recall/F1, per-class precision/recall/F1/support and the confusion matrix.

    Labels are 0-based class indices into ``class_names``; classes absent from both arrays score 0.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be 1-D and equal in length")
    if y_true.size == 0:
        raise ValueError("cannot compute metrics on an empty set")
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "n": int(y_true.size),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_precision": float(np.mean(precision)),
        "macro_recall": float(np.mean(recall)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def aggregate_folds(fold_metrics: Sequence[dict]) -> dict:
    """Mean and (sample) standard deviation over folds of every scalar metric, per-class F1
    included, plus the summed confusion matrix."""
    if not fold_metrics:
        raise ValueError("no fold metrics to aggregate")
    scalar_keys = [k for k, v in fold_metrics[0].items() if isinstance(v, float)]
    result: dict = {"folds": len(fold_metrics)}
    for key in scalar_keys:
        values = [float(m[key]) for m in fold_metrics]
        result[key] = {**mean_std(values), "values": values}
    per_class = {}
    for name in fold_metrics[0]["per_class"]:
        per_class[name] = {stat: mean_std([m["per_class"][name][stat] for m in fold_metrics])
                           for stat in ("precision", "recall", "f1")}
    result["per_class"] = per_class
    result["confusion_matrix"] = np.sum([m["confusion_matrix"] for m in fold_metrics], axis=0).tolist()
    return result


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """``{"mean", "std"}`` of ``values`` over folds: the sample standard deviation (ddof=1), 0 for a single fold."""
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else 0.0}
