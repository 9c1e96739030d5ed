"""Review decisions: what a person decided about a row of a `skutag run` OUT, in `OUT/_review/`.

`skutag review` appends each decision at once as one small Parquet file
(`_review/decision-<utc time>-<random>.parquet`, written under its final name in one step), so
a killed server loses nothing it acknowledged. Readers (`skutag review` on restart, the report,
`skutag train --decisions`, a `--since` night's `human_label`) take the latest decision per id.

A decision is `accept` (the predicted label is right), `correct` (another label) or
`not_product` (no label: left out of training). `decided_label` is null for `not_product`.
For a model with attribute heads, `decided_attributes` holds the values the person confirmed or
set, as a JSON object `{name: value}` (single-valued heads; null: the person left it unknown) or
`{name: [values]}` (multi-valued); null for `not_product`, for a model without heads, and in files
written before the column existed (read as null).
"""

from __future__ import annotations

import io
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from skutag import storage

REVIEW_DIR = "_review"
KINDS = ("accept", "correct", "not_product")
DECISION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("uri", pa.string()),
        ("sha256", pa.string()),
        ("predicted_label", pa.string()),
        ("decision", pa.string()),
        ("decided_label", pa.string()),
        ("who", pa.string()),
        ("decided_at", pa.timestamp("us", tz="UTC")),
        ("decided_attributes", pa.string()),  # JSON; see the module docstring
    ]
)


@dataclass(frozen=True)
class Decision:
    id: str
    uri: str
    sha256: str | None
    predicted_label: str | None
    decision: str  # one of KINDS
    decided_label: str | None
    who: str
    decided_at: datetime
    decided_attributes: str | None = None  # JSON {name: value | [values]}

    def __post_init__(self) -> None:
        if self.decision not in KINDS:
            raise ValueError(f"decision {self.decision!r}: expected one of {', '.join(KINDS)}")
        if (self.decided_label is None) != (self.decision == "not_product"):
            raise ValueError("decided_label is null exactly when the decision is not_product")
        if self.decided_attributes is not None and self.decision == "not_product":
            raise ValueError("a not_product decision has no attribute values")


def attribute_values(decided_attributes: str | None) -> dict[str, tuple[str, ...]]:
    """A decision's `decided_attributes` as {name: values} (a single value as a 1-tuple, unknown as ())."""
    if decided_attributes is None:
        return {}
    parsed = json.loads(decided_attributes)
    return {
        name: tuple(value) if isinstance(value, list) else (() if value is None else (value,))
        for name, value in parsed.items()
    }


def now() -> datetime:
    return datetime.now(timezone.utc)


def append_decision(out: str, decision: Decision, storage_options: dict[str, Any] | None = None) -> str:
    """Write one decision as its own Parquet file under OUT/_review/; returns its uri."""
    import pyarrow.parquet as pq

    row = {name: [getattr(decision, name)] for name in DECISION_SCHEMA.names}
    buffer = io.BytesIO()
    pq.write_table(pa.table(row, schema=DECISION_SCHEMA), buffer)
    stamp = decision.decided_at.strftime("%Y%m%dT%H%M%S%fZ")
    directory = storage.join(str(out), REVIEW_DIR)
    storage.makedirs(directory)
    uri = storage.join(directory, f"decision-{stamp}-{secrets.token_hex(4)}.parquet")
    storage.write_bytes(uri, buffer.getvalue(), storage_options)
    return uri


def decision_files(out: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The uris of the decision files under OUT/_review/ (one listing; no Arrow work)."""
    directory = storage.join(str(out), REVIEW_DIR)
    names = storage.list_names(directory, storage_options)
    return [storage.join(directory, n) for n in names if n.startswith("decision-") and n.endswith(".parquet")]


def read_decisions(out: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Every decision under OUT/_review/, the latest per id (an empty table when there are none)."""
    import pyarrow.parquet as pq

    tables = []
    for uri in decision_files(out, storage_options):
        with storage.open_input(uri, storage_options) as handle:
            tables.append(pq.read_table(handle, schema=DECISION_SCHEMA))
    if not tables:
        return DECISION_SCHEMA.empty_table()
    table = pa.concat_tables(tables).sort_by([("id", "ascending"), ("decided_at", "descending")])
    ids = table.column("id")
    if len(ids) < 2:
        return table
    keep = pc.invert(pc.equal(ids.slice(1), ids.slice(0, len(ids) - 1)).fill_null(False))
    return table.filter(pa.concat_arrays([pa.array([True]), keep.combine_chunks()]))


def labelled(decisions: pa.Table) -> pa.Table:
    """The decisions that give a label (accept and correct; not_product rows left out)."""
    return decisions.filter(pc.invert(pc.is_null(decisions.column("decided_label"))))
