"""The OOD score and the flags of the card's `review` section, shared by the trainer (which sets the
thresholds on the validation split, `trainer.review`), `skutag eval` and `skutag run` (which flags every
row, `batchrun.predict.review`).

`ood_scores = 1 - max_c cos(feature, mean_c)`: 0 on a class mean, up to 2. Features are
L2-normalised rows (`normalise`); the class means are stored normalised (or zero, for a class
without images: cosine 0). The trainer computes in float64, a run in float32. A row is flagged
`low_confidence` when its top-1 probability is below the confidence threshold and
`out_of_distribution` when its score is above the OOD threshold (`flags`, in `REASONS` order).
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
