"""Parity of the attribute heads: each `attr.<name>` output of the exported file against PyTorch.

The same per-image view as the label's figures (exporter.parity), under the same `Limits`:
- single-valued head: total variation distance per image (max, p99) and top-1 agreement;
- multi-valued head: per image the largest |Δprob| over the head's values (max, p99; like the
  TV, in [0, 1]) and the share of images given exactly the same values at the card's thresholds
  (gated like top-1 agreement).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from skutag.artifacts import Limits
from skutag.heads import SINGLE, AttributeHead


def head_figures(head: AttributeHead, reference: np.ndarray, exported: np.ndarray) -> dict[str, float]:
    """`max_delta`, `p99_delta` (TV for single heads, max |Δp| for multi) and `agreement`."""
    reference, exported = np.asarray(reference, np.float64), np.asarray(exported, np.float64)
    delta = np.abs(reference - exported)
    per_image = 0.5 * delta.sum(axis=1) if head.kind == SINGLE else delta.max(axis=1)
    same = (head.given(reference) == head.given(exported)).all(axis=1)
    return {
        "max_delta": float(per_image.max()),
        "p99_delta": float(np.percentile(per_image, 99)),
        "agreement": float(same.mean()),
    }


def heads_parity(
    heads: Sequence[AttributeHead], reference: Mapping[str, np.ndarray], exported: Mapping[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """{name: head_figures} for every head of the card."""
    missing = [h.output for h in heads if h.name not in exported]
    if missing:
        from skutag.errors import SkutagError

        raise SkutagError(f"parity check: the exported file has no output {', '.join(missing)}")
    return {h.name: head_figures(h, reference[h.name], exported[h.name]) for h in heads}


def head_failures(figures: Mapping[str, Mapping[str, float]], limits: Limits) -> list[str]:
    """What falls outside `limits`, one phrase per head and figure (empty: every head passes)."""
    problems = []
    for name, f in figures.items():
        if not f["max_delta"] < limits.max_tv:
            problems.append(
                f"attribute {name}: max per-image difference {f['max_delta']:.3g} >= {limits.max_tv:g}"
            )
        if not f["p99_delta"] < limits.p99_tv:
            problems.append(
                f"attribute {name}: p99 per-image difference {f['p99_delta']:.3g} >= {limits.p99_tv:g}"
            )
        if f["agreement"] < limits.min_top1_agreement:
            problems.append(
                f"attribute {name}: agreement {f['agreement']:.3f} < {limits.min_top1_agreement:g}"
            )
    return problems


def split_outputs(
    values: Sequence[np.ndarray], heads: Sequence[AttributeHead], embeddings: bool, domain: bool = False
) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
    """A graph's outputs in order (exporter.graph.output_names) -> probs, embedding, {head: probs}
    (`domain`: the graph has `domain_score` after the embedding, left out here)."""
    values = list(values)
    probs = values.pop(0)
    embedding = values.pop(0) if embeddings else None
    if domain:
        values.pop(0)
    if len(values) != len(heads):
        from skutag.errors import SkutagError

        raise SkutagError(
            f"parity check: expected {len(heads)} attribute outputs, the file has {len(values)}"
        )
    return probs, embedding, {h.name: v for h, v in zip(heads, values, strict=True)}
