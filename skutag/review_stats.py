"""The OOD score and the flags of the card's `review` section, shared by the trainer (which sets the
thresholds on the validation split, `trainer.review`), `skutag eval` and `skutag run` (which flags every
row, `batchrun.predict.review`).

`ood_scores = 1 - max_c cos(feature, mean_c)`: 0 on a class mean, up to 2. Features are
L2-normalised rows (`normalise`); the class means are stored normalised (or zero, for a class
without images: cosine 0). The trainer computes in float64, a run in float32. A row is flagged
`low_confidence` when its top-1 probability is below the confidence threshold and
`out_of_distribution` when its score is above the OOD threshold (`flags`, in `REASONS` order).

`domain_scores`: the squared Mahalanobis distance of a row's stage statistics (trainer.stage_stats) to
one Gaussian of the training rows' statistics, its covariance kept at low rank (trainer.review.domain_fit:
`mean` [S], `basis` [S, R] orthonormal, `weights` [R] = 1/variance - 1/rest, `rest` the variance left
to the other directions): `|d|^2 / rest + sum_r (d . basis_r)^2 x weights_r`, d = stats - mean. Not
wired into the card or the graph yet (docs/design.md, "The review section").
"""

from __future__ import annotations

import numpy as np

REASONS = ("low_confidence", "out_of_distribution")


def normalise(features: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Rows of `features` scaled to unit L2 norm (a zero row stays zero), in `dtype`."""
    features = np.asarray(features, dtype)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def ood_scores(features: np.ndarray, means: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """`1 - max cosine` of each feature row [N, D] to the class means [C, D], in `dtype` [N]."""
    unit = normalise(features, dtype)
    return (1.0 - (unit @ np.asarray(means, dtype).T).max(axis=1)).astype(dtype, copy=False)


def flags(
    top1: np.ndarray, ood: np.ndarray, confidence_threshold: float, ood_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(low_confidence, out_of_distribution) per row; a NaN score (no embedding) is never `far`."""
    return np.asarray(top1) < confidence_threshold, np.asarray(ood) > ood_threshold


def domain_scores(stats: np.ndarray, fit: dict[str, np.ndarray], dtype: type = np.float64) -> np.ndarray:
    """The low-rank Mahalanobis distance [N] of stage statistics [N, S] to the Gaussian `fit`
    (keys `mean`, `basis`, `weights`, `rest`: trainer.review.domain_fit)."""
    d = np.asarray(stats, dtype) - np.asarray(fit["mean"], dtype)
    projected = d @ np.asarray(fit["basis"], dtype)
    return (d * d).sum(axis=1) / dtype(fit["rest"]) + (projected**2 * np.asarray(fit["weights"], dtype)).sum(
        axis=1
    )
