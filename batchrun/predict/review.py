"""The review queue: `ood_score`, `review` and `review_reason` for models whose card has a `review` section.

The trainer (trainer.review) stores per-class means of L2-normalised training embeddings, and an
OOD threshold and a low-confidence threshold set on the validation split to flag a stated rate
(skutag 0.3 and earlier 0.4 cards: means and thresholds both from validation; read the same way). A row is flagged
when its top-1 probability is below `confidence_threshold` (`low_confidence`) or its
`ood_score = 1 - max cosine(embedding, class mean)` (for a section of score "stage-statistics": the graph's
`domain_score` output, the predictor's `ood_score`; issue 29) is above `ood_threshold`
(`out_of_distribution`) or, when the manifest gave the row a `label`, its top-1 label is
another one (`label_mismatch`); the reasons are comma-joined in that order. Error rows have
null in all three. Models without the card section get none of these columns.

A manifest's labels travel in the plan and come out as `manifest_label` (with or without a
review section). `label_mismatch` is derived per row when a unit is assembled, after the
fan-out of one decode to the ids that share an image, and again for rows `--since` copies:
the catalog's label may have changed while the photo did not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from skutag.card import METADATA_KEY
from skutag.review_stats import REASONS, flags, ood_scores

from ..arrow import filled_false, scalar
from .infer import Predictions

LABEL_MISMATCH = "label_mismatch"
MANIFEST_LABEL = pa.field("manifest_label", pa.string())
FIELDS = (
    pa.field("ood_score", pa.float32()),
    pa.field("review", pa.bool_()),
    pa.field("review_reason", pa.string()),
)


# The footer key of a part's review thresholds (the card in the footer leaves its class statistics out).
REVIEW_KEY = "skutag.review"


@dataclass(frozen=True)
class Review:
    means: np.ndarray | None  # float32 [classes, D], unit rows (or zero); None: thresholds only (a footer)
    ood_threshold: float
    confidence_threshold: float

    @classmethod
    def from_section(cls, section: dict[str, Any] | None) -> Review | None:
        if section is None:
            return None
        means = section.get("class_means")
        return cls(
            None if means is None else np.asarray(means, np.float32),
            float(section["ood_threshold"]),
            float(section["confidence_threshold"]),
        )

    def scores(self, embedding: np.ndarray) -> np.ndarray:
        """`1 - max cosine` to the class means, float32 [rows]."""
        assert self.means is not None, "a footer's review has thresholds only"
        return ood_scores(embedding, self.means, np.float32)

    def columns(self, ok: np.ndarray, top1: np.ndarray, ood: np.ndarray | None) -> dict[str, pa.Array]:
        """The three columns for rows with `ok`, top-1 probability and OOD score (null where not ok)."""
        rows = len(ok)
        if ood is None:
            ood = np.full(rows, np.nan, np.float32)
        ood = np.asarray(ood[:rows], np.float32)
        low, far = flags(top1[:rows], ood, self.confidence_threshold, self.ood_threshold)
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
    """The Review of a schema's (or file's) metadata: its `skutag.review` thresholds, else (parts of skutag
    0.3 and earlier 0.4) the card's review section; None without either."""
    if not metadata:
        return None
    thresholds = metadata.get(REVIEW_KEY.encode()) or metadata.get(REVIEW_KEY)  # type: ignore[call-overload]
    if thresholds is not None:
        return Review.from_section(json.loads(thresholds))
    text = metadata.get(METADATA_KEY.encode()) or metadata.get(METADATA_KEY)  # type: ignore[call-overload]
    if text is None:
        return None
    return Review.from_section(json.loads(text).get("review"))


def wanted(contract) -> bool:
    """Whether this model's runs carry the review columns (a review section, and an `embedding` output or,
    for a section of score stage-statistics, a `domain_score` output)."""
    return contract.card.review is not None and (contract.embedding_dim is not None or contract.reads_domain)


def needs_embedding(contract) -> bool:
    """Whether the OOD score is computed here from the embedding (the class-mean cosine)."""
    return wanted(contract) and not contract.reads_domain


def with_review(predict: Callable, contract, keep_embedding: bool) -> Callable:
    """`predict` (built with embeddings when `needs_embedding`) plus `ood_score`; drops the embedding unless
    kept. A model whose graph computes the score (`domain_score`) gets it from the predictor as it is."""
    if not needs_embedding(contract):
        return predict
    review = Review.from_section(contract.card.review)

    def reviewed(batch) -> Predictions:
        predictions = predict(batch)
        ood = review.scores(predictions.embedding)
        return replace(
            predictions, embedding=predictions.embedding if keep_embedding else None, ood_score=ood
        )

    return reviewed


def with_manifest_labels(table: pa.Table, labels: pa.ChunkedArray | pa.Array, schema: pa.Schema) -> pa.Table:
    """`table` (every column of `schema` but `manifest_label`) with `labels` (the plan's, null where a
    row has none) as `manifest_label` when the schema has it, and `label_mismatch` re-derived in
    `review` / `review_reason` when it has those: a copied row may carry a reason from an earlier
    night's label, or from a manifest that had labels and has none now."""
    labels = labels.combine_chunks() if isinstance(labels, pa.ChunkedArray) else labels
    if MANIFEST_LABEL.name in schema.names:
        table = table.add_column(schema.get_field_index(MANIFEST_LABEL.name), MANIFEST_LABEL, labels)
    if "review_reason" not in schema.names:
        return table
    string = pa.string()
    mark, comma = scalar(LABEL_MISMATCH, string), scalar(",", string)
    ok = pc.equal(table["status"], scalar("ok", string))
    mismatch = filled_false(pc.and_(ok, pc.not_equal(table["label"], labels)))
    others = pc.replace_substring_regex(table["review_reason"], f"(^|,){LABEL_MISMATCH}$", "")
    others = pc.if_else(pc.equal(others, scalar("", string)), scalar(None, string), others)
    joined = pc.if_else(pc.is_valid(others), pc.binary_join_element_wise(others, mark, comma), mark)
    reason = pc.if_else(mismatch, joined, others)
    review = pc.if_else(ok, pc.is_valid(reason), scalar(None, pa.bool_()))
    table = table.set_column(schema.get_field_index("review_reason"), "review_reason", reason)
    table = table.set_column(schema.get_field_index("review"), "review", review)
    return table.cast(schema)
