"""Attribute heads: the card's description of a model's extra outputs (colour, pattern, style, ...).

A model may carry, beside its `label` head, one head per catalog attribute
(docs/design.md, "The model card" and "The ONNX I/O contract"). Each head is `single`
(one value per image: softmax over its values) or `multi` (any number of values: one
sigmoid per value, a value is given when its probability reaches its threshold). The
exported graph names each head's probabilities `attr.<name>`; batchrun writes `<name>` and
`<name>_score` columns. This module owns the head description, its validation, the output
and column names, and the one decision rule from probabilities to values, so the trainer,
the exporter, batchrun and `skutag predict` read a head the same way.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

SINGLE, MULTI = "single", "multi"
KINDS = (SINGLE, MULTI)
OUTPUT_PREFIX = "attr."
NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# Columns a head's `<name>` or `<name>_score` must not take (docs/design.md, "The Parquet schema").
RESERVED = frozenset(
    {
        "id", "uri", "version", "status", "error_kind", "error", "label", "label_index", "score",
        "topk_labels", "topk_indices", "topk_scores", "width", "height", "bytes", "sha256",
        "predicted_at", "embedding", "manifest_label", "ood_score", "review", "review_reason",
        "human_label", "task", "probs", "removed_at", "id_bucket",
    }
)  # fmt: skip
LOW_CONFIDENCE = "low_confidence"
# What a head's Linear layer reads (docs/design.md, "Attribute heads"): the pooled features the label head
# reads, and optionally the colour statistics of the pixels (trainer.taps) appended to them.
POOLED, COLOUR = "pooled", "colour"
READS = ((POOLED,), (POOLED, COLOUR))


@dataclass(frozen=True)
class AttributeHead:
    """One attribute head. `thresholds`: multi only, one per value; `review_threshold`: rows whose head
    confidence (`confidence`) falls below it join the review queue as `low_confidence:<name>`."""

    name: str
    kind: str
    values: tuple[str, ...]
    thresholds: tuple[float, ...] | None = None
    temperature: float = 1.0
    review_threshold: float | None = None
    reads: tuple[str, ...] = (POOLED,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))
        object.__setattr__(self, "reads", tuple(self.reads))
        if self.thresholds is not None:
            object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))

    @property
    def output(self) -> str:
        """The ONNX output holding this head's probabilities."""
        return OUTPUT_PREFIX + self.name

    @property
    def score_column(self) -> str:
        return self.name + "_score"

    def problems(self) -> list[str]:
        """What is wrong with this head, one phrase each (empty: valid)."""
        where = f"attribute {self.name!r}"
        found = []
        if not isinstance(self.name, str) or not NAME.match(self.name):
            found.append(f"{where}: name must be lowercase letters, digits and _ (a letter first, <= 40)")
        elif self.name in RESERVED or self.score_column in RESERVED:
            found.append(f"{where}: name takes a column skutag already writes")
        if self.kind not in KINDS:
            found.append(f"{where}: kind must be one of {KINDS}")
        least = 2 if self.kind == SINGLE else 1
        if len(self.values) < least or not all(isinstance(v, str) and v for v in self.values):
            found.append(f"{where}: needs at least {least} non-empty values")
        elif len(set(self.values)) != len(self.values):
            found.append(f"{where}: values must be unique")
        if self.kind == MULTI:
            if self.thresholds is None or len(self.thresholds) != len(self.values):
                found.append(f"{where}: a multi head needs one threshold per value")
            elif not all(0.0 < t < 1.0 for t in self.thresholds):
                found.append(f"{where}: thresholds must be in (0, 1)")
        elif self.thresholds is not None:
            found.append(f"{where}: only multi heads have thresholds")
        if not _number(self.temperature) or self.temperature <= 0:
            found.append(f"{where}: temperature must be a positive number")
        if self.review_threshold is not None and not (
            _number(self.review_threshold) and 0.0 <= self.review_threshold <= 1.0
        ):
            found.append(f"{where}: review_threshold must be in [0, 1]")
        if self.reads not in READS:
            found.append(f"{where}: reads must be one of {[list(r) for r in READS]}")
        return found

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "values": list(self.values),
            "temperature": self.temperature,
        }
        if self.thresholds is not None:
            data["thresholds"] = list(self.thresholds)
        if self.review_threshold is not None:
            data["review_threshold"] = self.review_threshold
        if self.reads != (POOLED,):  # a head on the pooled features alone serialises as before
            data["reads"] = list(self.reads)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> AttributeHead:
        if not isinstance(data, dict):
            raise ValueError("an attribute head must be an object")
        known = {"name", "kind", "values", "thresholds", "temperature", "review_threshold", "reads"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"attribute head: unknown fields {unknown}")
        missing = sorted({"name", "kind", "values"} - set(data))
        if missing:
            raise ValueError(f"attribute head: missing fields {missing}")
        return cls(**data)

    # -- probabilities -> what a row says ------------------------------------

    def given(self, probs: np.ndarray) -> np.ndarray:
        """bool [rows, values]: the values each row is given (single: its top-1; multi: >= threshold)."""
        probs = np.asarray(probs)
        if self.kind == SINGLE:
            picked = np.zeros(probs.shape, bool)
            picked[np.arange(len(probs)), probs.argmax(axis=1)] = True
            return picked
        return probs >= np.asarray(self.thresholds, probs.dtype)

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        """float [rows] in [0, 1]: single, the top-1 probability; multi, the least decided value's distance
        from its threshold, scaled so 0 is on the threshold and 1 is at 0 or 1."""
        probs = np.asarray(probs, np.float64)
        if self.kind == SINGLE:
            return probs.max(axis=1)
        t = np.asarray(self.thresholds, np.float64)
        margin = np.where(probs >= t, (probs - t) / (1.0 - t), (t - probs) / t)
        return margin.min(axis=1)


def heads_problems(heads: Any) -> list[str]:
    """Problems of a card's `attributes` list: each head's, and names that repeat."""
    if not isinstance(heads, tuple) or not all(isinstance(h, AttributeHead) for h in heads) or not heads:
        return ["attributes must be a non-empty list of attribute heads"]
    found = [p for head in heads for p in head.problems()]
    names = [head.name for head in heads]
    if len(set(names)) != len(names):
        found.append("attribute names must be unique")
    return found


def as_heads(raw: Any) -> tuple[AttributeHead, ...] | None:
    """A card's `attributes` as heads: None stays None; dicts (from JSON) become AttributeHead."""
    if raw is None:
        return None
    if not isinstance(raw, (list, tuple)):
        raise ValueError("attributes must be a list")
    return tuple(h if isinstance(h, AttributeHead) else AttributeHead.from_dict(h) for h in raw)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
