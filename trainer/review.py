"""The card's `review` section: what "in distribution" looks like, from the validation split.

Features are the pooled penultimate features (the exported model's `embedding` output).
Each class's mean is the mean of its validation images' L2-normalised features, normalised
again; an image's OOD score is `1 - max_c cos(feature, mean_c)` (0 = on a class mean, up to 2).
`ood_threshold` is the `tpr` quantile of the validation scores, so that fraction of validation
images scores at or below it (a 95% true-positive rate by default). `confidence_threshold` is
the same quantile taken from the other side over the correctly classified validation images:
the top-1 probability below which the least confident (1 - tpr) of the right answers fall.
batchrun.predict.review applies them; both score through skutag.review_stats.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from skutag.card import REVIEW_SCORE
from skutag.review_stats import normalise, ood_scores

DEFAULT_TPR = 0.95


def review_section(
    features: np.ndarray, labels: np.ndarray, probs: np.ndarray, num_classes: int, tpr: float = DEFAULT_TPR
) -> dict[str, Any]:
    """The card's review section from validation features [N, D], true labels [N] and probabilities [N, C]."""
    unit = normalise(features)
    labels = np.asarray(labels)
    means = np.zeros((num_classes, unit.shape[1]))
    for c in range(num_classes):  # a class without validation images keeps a zero mean (cosine 0)
        if (labels == c).any():
            means[c] = unit[labels == c].mean(axis=0)
    means = normalise(means) * (np.linalg.norm(means, axis=1, keepdims=True) > 0)
    scores = ood_scores(features, means)
    probs = np.asarray(probs)
    correct = probs.argmax(axis=1) == labels
    top1 = probs.max(axis=1)[correct] if correct.any() else probs.max(axis=1)
    return {
        "score": REVIEW_SCORE,
        "class_means": [[float(v) for v in row.astype(np.float32)] for row in means],
        "ood_threshold": float(np.clip(np.quantile(scores, tpr), 0.0, 2.0)),
        "tpr": float(tpr),
        "confidence_threshold": float(np.clip(np.quantile(top1, 1.0 - tpr), 0.0, 1.0)),
    }
