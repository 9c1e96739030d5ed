"""Per-attribute figures for `metrics.json` (`attributes.<name>`), the same in training and eval.

Every figure is over the photos that have a value for the attribute (missing ones are
masked out) and uses the card's head: its temperature is already in the probabilities,
its thresholds decide a multi-valued head's values. Keys, for every head: `accuracy`,
`macro_f1`, `map`, `micro_f1`, `images`, `missing`.
- single: accuracy and macro F1 of the top-1 value, `map` the mean one-vs-rest average
  precision, `micro_f1` equal to accuracy (one value per photo), `confusion` (rows: true
  value, columns: predicted, in the head's value order);
- multi: `map` the mean average precision over values with a positive, micro and macro F1
  of the values given at the thresholds, `accuracy` the share of photos whose set of values
  is exactly right.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from skutag.trainer.attributes import Encoded

from skutag.heads import SINGLE, AttributeHead


def mean_average_precision(targets: np.ndarray, probs: np.ndarray) -> float:
    """Mean over columns with at least one positive of scikit-learn's average precision (nan: none)."""
    from sklearn.metrics import average_precision_score

    scores = [
        average_precision_score(targets[:, v], probs[:, v])
        for v in range(targets.shape[1])
        if targets[:, v].any()
    ]
    return float(np.mean(scores)) if scores else float("nan")


def head_metrics(head: AttributeHead, probs: np.ndarray, encoded: Encoded) -> dict[str, Any]:
    """The figures of one head on photos with `probs` [N, V] (calibrated) and their `encoded` values."""
    from sklearn.metrics import confusion_matrix, f1_score

    probs = np.asarray(probs)
    kept, targets = probs[encoded.mask], encoded.targets[encoded.mask]
    base: dict[str, Any] = {"images": int(encoded.mask.sum()), "missing": int((~encoded.mask).sum())}
    nan = float("nan")
    if not len(kept):
        return {**base, "accuracy": nan, "macro_f1": nan, "map": nan, "micro_f1": nan}
    values = list(range(len(head.values)))
    if head.kind == SINGLE:
        predicted = kept.argmax(axis=1)
        onehot = np.eye(len(values), dtype=bool)[targets]
        accuracy = float((predicted == targets).mean())
        return {
            **base,
            "accuracy": accuracy,
            "macro_f1": float(f1_score(targets, predicted, average="macro", zero_division=0)),
            "map": mean_average_precision(onehot, kept),
            "micro_f1": accuracy,
            "confusion": confusion_matrix(targets, predicted, labels=values).tolist(),
        }
    truth, given = targets > 0.5, head.given(kept)
    present = [v for v in values if truth[:, v].any() or given[:, v].any()]
    return {
        **base,
        "accuracy": float((given == truth).all(axis=1).mean()),
        "macro_f1": float(f1_score(truth, given, average="macro", labels=present, zero_division=0)),
        "map": mean_average_precision(truth, kept),
        "micro_f1": float(f1_score(truth, given, average="micro", zero_division=0)),
    }


def attribute_metrics(
    heads: Sequence[AttributeHead], probs: Mapping[str, np.ndarray], encoded: Mapping[str, Encoded]
) -> dict[str, dict[str, Any]]:
    """{name: head_metrics} for every head: what metrics.json holds under `attributes`."""
    return {head.name: head_metrics(head, probs[head.name], encoded[head.name]) for head in heads}
