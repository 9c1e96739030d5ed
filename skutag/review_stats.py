"""The OOD score of the card's `review` section, shared by the trainer (which sets its threshold on the
validation split, `trainer.review`) and `skutag run` (which scores every row, `batchrun.predict.review`).

`ood_scores = 1 - max_c cos(feature, mean_c)`: 0 on a class mean, up to 2. Features are
L2-normalised rows (`normalise`); the class means are stored normalised (or zero, for a class
without validation images: cosine 0). The trainer computes in float64, a run in float32.
"""

from __future__ import annotations

import numpy as np


def normalise(features: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Rows of `features` scaled to unit L2 norm (a zero row stays zero), in `dtype`."""
    features = np.asarray(features, dtype)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def ood_scores(features: np.ndarray, means: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """`1 - max cosine` of each feature row [N, D] to the class means [C, D], in `dtype` [N]."""
    unit = normalise(features, dtype)
    return (1.0 - (unit @ np.asarray(means, dtype).T).max(axis=1)).astype(dtype, copy=False)
