"""Classification metrics from predicted probabilities (scikit-learn), the same for training and eval.

`summary_metrics` gives the per-epoch figures of history.csv and metrics.json;
`per_class_table`, `confusion` and `roc` give the report's details. Every function
takes integer labels and a `[N, K]` probability matrix whose columns are the card's classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Metric name -> True when larger is better (for --best-metric).
SELECTABLE = {"macro_f1": True, "accuracy": True, "top5_accuracy": True, "val_loss": False}


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (cross-entropy on probabilities)."""
    if len(labels) == 0:
        return float("nan")
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


def top_k_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean()) if len(labels) else float("nan")


def summary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """val_loss, accuracy, top5_accuracy, macro precision/recall/F1 and the sample count."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    predicted = probs.argmax(axis=1)
    # Macro averages over the classes that occur (true or predicted), scikit-learn's default.
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, average="macro", zero_division=0
    )
    return {
        "val_loss": log_loss(labels, probs),
        "accuracy": float(accuracy_score(labels, predicted)),
        "top5_accuracy": top_k_accuracy(labels, probs, 5),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "macro_f1": float(f1),
        "samples": int(len(labels)),
    }


def per_class_table(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        labels, probs.argmax(axis=1), labels=list(range(len(classes))), zero_division=0
    )
    return [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    ]


def confusion(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(labels, probs.argmax(axis=1), labels=list(range(num_classes)))


def roc(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """One-vs-rest ROC curves and AUC per class (classes without positives or negatives are skipped)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    curves, aucs = {}, {}
    for i, name in enumerate(classes):
        positives = labels == i
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, i])
        curves[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
        aucs[name] = float(roc_auc_score(positives, probs[:, i]))
    macro = float(np.mean(list(aucs.values()))) if aucs else float("nan")
    return {"per_class_auc": aucs, "macro_auc": macro, "curves": curves}
