"""The card's `review` section: what "in distribution" looks like, and thresholds that flag the stated rate.

Statistics and thresholds come from different photos, so that photos the model never saw are flagged
at the rate the card states: the class means from the TRAINING features, the thresholds from the
VALIDATION split (skutag 0.4 and earlier took both from the same validation photos, so held-out photos
scored above a threshold fitted to the photos that had defined the means; tests/trainer/test_review.py).

Features are the pooled penultimate features (the exported model's `embedding` output). Each class's
mean is the mean of its training images' L2-normalised features, normalised again; an image's OOD score
is `1 - max_c cos(feature, mean_c)` (skutag.review_stats; the k-nearest-neighbour distance and a
Mahalanobis distance were measured against it: benchmarks/review_suite.py, RESULTS.md). With a target
flag rate r (`--review-rate`, default 0.10): `ood_threshold` is the (1 - r x OOD_SHARE) quantile of the
validation OOD scores, and `confidence_threshold` the largest top-1 probability (calibrated, as the
exported model gives it) at which validation photos flagged for either reason stay within r. `tpr` is
the fraction of validation photos under the OOD threshold. `validation` records what that queue did on
the validation split (rows flagged, wrong predictions caught, per reason), `review_figures` computes the
same for any labelled set (`skutag eval`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from skutag.card import DOMAIN_SCORE, REVIEW_SCORE
from skutag.review_stats import REASONS, domain_scores, flags, normalise, ood_scores

DEFAULT_RATE = 0.10
DOMAIN_RANK = 16  # directions of the stage statistics' covariance kept (RESULTS.md: rank 16 ~ full)
OOD_SHARE = (
    0.5  # of the target rate, the part the OOD threshold takes on validation (RESULTS.md, review_suite)
)


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per class, the normalised mean of the L2-normalised features [C, D] (zero for a class without rows)."""
    unit = normalise(features)
    labels = np.asarray(labels)
    means = np.zeros((num_classes, unit.shape[1]))
    for c in range(num_classes):
        if (labels == c).any():
            means[c] = unit[labels == c].mean(axis=0)
    return normalise(means) * (np.linalg.norm(means, axis=1, keepdims=True) > 0)


def domain_fit(stats: np.ndarray, rank: int = DOMAIN_RANK) -> dict[str, np.ndarray]:
    """The Gaussian of training rows' stage statistics [N, S] (trainer.stage_stats) that
    skutag.review_stats.domain_scores measures against: its mean, and its Ledoit-Wolf shrunk covariance
    kept at `rank` directions (the top eigenvectors; the others share the mean of their variances)."""
    from sklearn.covariance import LedoitWolf

    stats = np.asarray(stats, np.float64)
    if len(stats) < 2:
        raise ValueError("the domain Gaussian needs at least two rows")
    mean = stats.mean(axis=0)
    values, vectors = np.linalg.eigh(LedoitWolf().fit(stats - mean).covariance_)
    values, vectors = values[::-1], vectors[:, ::-1]
    rank = min(rank, len(values) - 1)
    rest = float(values[rank:].mean())
    return {
        "mean": mean,
        "basis": np.ascontiguousarray(vectors[:, :rank]),
        "weights": 1.0 / values[:rank] - 1.0 / rest,
        "rest": np.float64(rest),
    }


def confidence_threshold(top1: np.ndarray, far: np.ndarray, rate: float) -> float:
    """The largest threshold c (a top-1 value below 1, or 0) with mean((top1 < c) | far) <= rate."""
    best = 0.0
    for c in np.unique(top1):  # ascending: the flagged fraction only grows
        if c >= 1.0 or np.mean((top1 < c) | far) > rate:
            break
        best = float(c)
    return best


def thresholds(scores: np.ndarray, top1: np.ndarray, rate: float) -> tuple[float, float]:
    """(ood_threshold, confidence_threshold) that flag `rate` of these validation rows: the OOD threshold
    at the (1 - rate x OOD_SHARE) quantile of the scores, the confidence threshold filling the rest."""
    if not len(scores):
        return 2.0, 0.0
    ood = float(np.quantile(scores, 1.0 - rate * OOD_SHARE))  # within the score's range (cosine: [0, 2])
    ood = max(ood, 0.0)  # a float64 domain distance is >= 0 up to rounding
    # candidates are float32 probabilities below 1 (what an exported graph gives): a threshold within rounding
    # of 1 would flag the saturated rows of a run dir (float64) and not those of its ONNX file (float32)
    top1 = np.asarray(top1, np.float32).astype(np.float64)
    return ood, confidence_threshold(top1, np.asarray(scores) > ood, rate)


def review_section(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    val_probs: np.ndarray,
    num_classes: int,
    rate: float = DEFAULT_RATE,
    domain: tuple[dict[str, np.ndarray], np.ndarray, tuple[str, ...]] | None = None,
) -> dict[str, Any]:
    """The card's review section: means from the training features [N, D] and labels [N]; thresholds from the
    validation features [M, D], labels [M] and (calibrated) probabilities [M, C], flagging `rate` of them.

    `domain` (the Gaussian of the training rows' stage statistics, `domain_fit`; the validation rows' stage
    statistics [M, S]; the tapped stages): the OOD score is then the domain score (`score:
    "stage-statistics"`, its threshold set on those validation rows); the class means stay in the section."""
    means = class_means(train_features, train_labels, num_classes)
    if domain is None:
        scores = ood_scores(val_features, means)
    else:
        fit, val_stats, stages = domain
        scores = domain_scores(val_stats, fit)
    probs = np.asarray(val_probs, np.float64)
    ood_threshold, low_threshold = thresholds(scores, probs.max(axis=1), rate)
    section = {
        "score": REVIEW_SCORE if domain is None else DOMAIN_SCORE,
        "class_means": [[float(v) for v in row.astype(np.float32)] for row in means],
        "ood_threshold": ood_threshold,
        "tpr": float(np.mean(scores <= ood_threshold)) if len(scores) else 1.0,
        "confidence_threshold": low_threshold,
        "statistics": "train",
        "target_rate": float(rate),
    }
    if domain is not None:
        section |= {"stages": list(stages), "rank": len(fit["weights"])}
    section["validation"] = review_figures(section, probs, scores, val_labels)
    return section


def review_figures(
    section: dict[str, Any], probs: np.ndarray, scores: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """What the queue of `section` does on labelled rows: rows, flagged, wrong, wrong caught, per reason."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    low, far = flags(probs.max(axis=1), scores, section["confidence_threshold"], section["ood_threshold"])
    wrong = probs.argmax(axis=1) != labels
    flagged = low | far
    return {
        "rows": int(len(labels)),
        "flagged": int(flagged.sum()),
        "wrong": int(wrong.sum()),
        "wrong_caught": int((flagged & wrong).sum()),
        "reasons": {
            reason: {"flagged": int(hit.sum()), "wrong_caught": int((hit & wrong).sum())}
            for reason, hit in zip(REASONS, (low, far), strict=True)
        },
    }
