"""The attribute columns of a model with attribute heads (docs/design.md, "The Parquet schema").

A carded model whose card lists attribute heads (skutag.heads) must have an `attr.<name>`
float32 output per head, as wide as the head's values; `check_outputs` refuses it in one
line otherwise. Per head the table gets `<name>` and `<name>_score`: for a single-valued
head the top-1 value and its probability; for a multi-valued head the list of values whose
probability reaches the card's threshold, most probable first, and their probabilities (an
empty list when none does). Error rows are null. When the table has the review columns, a
head with a `review_threshold` flags rows whose head confidence (`AttributeHead.confidence`)
is below it: `low_confidence:<name>` joins `review_reason` after the label's reasons and
before `label_mismatch`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa

from skutag.card import METADATA_KEY, ModelCard
from skutag.errors import InputError
from skutag.heads import LOW_CONFIDENCE, SINGLE, AttributeHead, as_heads


def check_outputs(path: Path, card: ModelCard, outputs: Mapping, float32: int = 1) -> None:
    """Every head of the card is a float32 output `attr.<name>` of the head's width; else InputError."""
    for head in card.attributes or ():
        info = outputs.get(head.output)
        if info is None:
            raise InputError(
                f"{path}: its card lists attribute {head.name!r} but the graph has no {head.output!r} output"
            )
        if info.elem_type != float32:
            raise InputError(f"{path}: output {head.output!r} must be float32")
        width = info.dims[-1] if info.dims else None
        if width != len(head.values):
            raise InputError(
                f"{path}: output {head.output!r} has {width} columns but attribute {head.name!r} has "
                f"{len(head.values)} values"
            )


def schema_heads(metadata: Mapping | None) -> tuple[AttributeHead, ...]:
    """The attribute heads of the card in a schema's (or file's) metadata; () without any."""
    if not metadata:
        return ()
    text = metadata.get(METADATA_KEY.encode()) or metadata.get(METADATA_KEY)  # type: ignore[call-overload]
    if text is None:
        return ()
    return _heads(text)


@functools.lru_cache(maxsize=8)
def _heads(card_json: str | bytes) -> tuple[AttributeHead, ...]:
    """Parsed once per card (the writer asks for every batch)."""
    return as_heads(json.loads(card_json).get("attributes")) or ()


def fields(heads: tuple[AttributeHead, ...]) -> list[pa.Field]:
    """`<name>`, `<name>_score` per head, in the card's order."""
    found = []
    for head in heads:
        if head.kind == SINGLE:
            found += [pa.field(head.name, pa.string()), pa.field(head.score_column, pa.float32())]
        else:
            found += [
                pa.field(head.name, pa.list_(pa.string())),
                pa.field(head.score_column, pa.list_(pa.float32())),
            ]
    return found


def columns(
    heads: tuple[AttributeHead, ...], probs: Mapping[str, np.ndarray], ok: np.ndarray
) -> dict[str, pa.Array]:
    """The columns of `fields` for rows whose head probabilities are `probs[name]` ([rows, values])."""
    failed = ~np.asarray(ok, bool)
    rows = len(failed)
    out: dict[str, pa.Array] = {}
    for head in heads:
        p = np.asarray(probs[head.name][:rows], np.float32)
        values = pa.array(head.values, pa.string())
        if head.kind == SINGLE:
            top = p.argmax(axis=1)
            out[head.name] = values.take(pa.array(top, mask=failed))
            out[head.score_column] = pa.array(p[np.arange(rows), top], pa.float32(), mask=failed)
            continue
        given = head.given(p) & ~failed[:, None]
        order = np.argsort(-np.where(given, p, -1.0), axis=1, kind="stable")  # given values first, best first
        counts = given.sum(axis=1)
        picked = np.concatenate([order[r, : counts[r]] for r in range(rows)]) if rows else np.zeros(0, int)
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        row_of = np.repeat(np.arange(rows), counts)
        mask = pa.array(failed)
        out[head.name] = pa.ListArray.from_arrays(
            offsets, values.take(pa.array(picked, pa.int64())), mask=mask
        )
        out[head.score_column] = pa.ListArray.from_arrays(
            offsets, pa.array(p[row_of, picked], pa.float32()), mask=mask
        )
    return out


def review_reasons(
    heads: tuple[AttributeHead, ...], probs: Mapping[str, np.ndarray], ok: np.ndarray
) -> list[list[str]]:
    """Per row, `low_confidence:<name>` for each reviewed head below its threshold (none for error rows)."""
    ok = np.asarray(ok, bool)
    reasons: list[list[str]] = [[] for _ in range(len(ok))]
    for head in heads:
        if head.review_threshold is None:
            continue
        low = head.confidence(np.asarray(probs[head.name][: len(ok)])) < head.review_threshold
        for row in np.flatnonzero(low & ok):
            reasons[row].append(f"{LOW_CONFIDENCE}:{head.name}")
    return reasons


def with_review(review_columns: dict[str, pa.Array], reasons: list[list[str]]) -> dict[str, pa.Array]:
    """The label's review columns with each row's attribute reasons appended (`review` set where any)."""
    if not any(reasons):
        return review_columns
    joined = []
    for old, extra in zip(review_columns["review_reason"].to_pylist(), reasons, strict=True):
        parts = ([old] if old else []) + extra
        joined.append(",".join(parts) if parts else None)
    flagged = review_columns["review"].to_pylist()
    review = [None if f is None else (f or bool(extra)) for f, extra in zip(flagged, reasons, strict=True)]
    return {
        **review_columns,
        "review": pa.array(review, pa.bool_()),
        "review_reason": pa.array(joined, pa.string()),
    }
