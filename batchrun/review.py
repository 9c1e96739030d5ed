"""The review queue: `ood_score`, `review` and `review_reason` for models whose card has a `review` section.

The trainer (trainer.review) stores per-class means of L2-normalised validation embeddings, an
OOD threshold at a stated true-positive rate, and a low-confidence threshold. A row is flagged
when its top-1 probability is below `confidence_threshold` (`low_confidence`) or its
`ood_score = 1 - max cosine(embedding, class mean)` is above `ood_threshold`
(`out_of_distribution`); the reasons are comma-joined. Error rows have null in all three.
`label_mismatch` (top-1 differs from a manifest `label`) is not implemented: the plan does not
carry manifest labels. Models without the card section get none of these columns.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from skutag.card import METADATA_KEY

from .infer import Predictions

REASONS = ("low_confidence", "out_of_distribution")
FIELDS = (
    pa.field("ood_score", pa.float32()),
    pa.field("review", pa.bool_()),
    pa.field("review_reason", pa.string()),
)


@dataclass(frozen=True)
class Review:
    means: np.ndarray  # float32 [classes, D], unit rows (or zero)
    ood_threshold: float
    confidence_threshold: float

    @classmethod
    def from_section(cls, section: dict[str, Any] | None) -> Review | None:
        if section is None:
            return None
        return cls(
            np.asarray(section["class_means"], np.float32),
            float(section["ood_threshold"]),
            float(section["confidence_threshold"]),
        )

    def scores(self, embedding: np.ndarray) -> np.ndarray:
        """`1 - max cosine` to the class means, float32 [rows]."""
        e = np.asarray(embedding, np.float32)
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return (1.0 - (e @ self.means.T).max(axis=1)).astype(np.float32)

    def columns(self, ok: np.ndarray, top1: np.ndarray, ood: np.ndarray | None) -> dict[str, pa.Array]:
        """The three columns for rows with `ok`, top-1 probability and OOD score (null where not ok)."""
        rows = len(ok)
        if ood is None:
            ood = np.full(rows, np.nan, np.float32)
        ood = np.asarray(ood[:rows], np.float32)
        low = np.asarray(top1[:rows]) < self.confidence_threshold
        far = ood > self.ood_threshold
        flagged = low | far
        reasons = [
            ",".join(r for r, hit in zip(REASONS, pair, strict=True) if hit) if good and any(pair) else None
            for good, pair in zip(ok.tolist(), zip(low.tolist(), far.tolist(), strict=True), strict=True)
        ]
        failed = ~np.asarray(ok, bool)
        return {
            "ood_score": pa.array(ood, pa.float32(), mask=failed),
            "review": pa.array(flagged, pa.bool_(), mask=failed),
            "review_reason": pa.array(reasons, pa.string()),
        }


def card_review(metadata: dict[bytes, bytes] | dict[str, str] | None) -> Review | None:
    """The Review of the card in a schema's (or file's) metadata; None without one or without the section."""
    if not metadata:
        return None
    text = metadata.get(METADATA_KEY.encode()) or metadata.get(METADATA_KEY)  # type: ignore[call-overload]
    if text is None:
        return None
    return Review.from_section(json.loads(text).get("review"))


def wanted(contract) -> bool:
    """Whether this model's runs carry the review columns (a review section and an `embedding` output)."""
    return contract.card.review is not None and contract.embedding_dim is not None


def with_review(predict: Callable, contract, keep_embedding: bool) -> Callable:
    """`predict` (built with embeddings when `wanted`) plus `ood_score`; drops the embedding unless kept."""
    if not wanted(contract):
        return predict
    review = Review.from_section(contract.card.review)

    def reviewed(batch) -> Predictions:
        predictions = predict(batch)
        ood = review.scores(predictions.embedding)
        return replace(
            predictions, embedding=predictions.embedding if keep_embedding else None, ood_score=ood
        )

    return reviewed
