"""A person's label carried into a `--since` night: the `human_label` column.

`skutag review` writes decisions under PREV/_review/ (`skutag.decisions`). A night run with
`--since PREV` gives a row the label a person decided for its id when the row's image is the one
they looked at (same sha256); an earlier night's `human_label` travels on the same way, the newer
decision winning. Without any such label the schema has no `human_label` column (unchanged).
Photos marked not a product carry nothing.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from skutag import storage
from skutag.decisions import decision_files, labelled, read_decisions

from .reader import CommittedRows

HUMAN_LABEL = pa.field("human_label", pa.string())


class HumanLabels:
    """id -> (sha256 of the image people saw, the label they gave)."""

    def __init__(self, table: pa.Table):
        self.table = table  # id, sha256, human_label; one row per id

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, rows: pa.Table) -> pa.Array:
        """`human_label` for `rows` (id, sha256): the person's label where the image is unchanged, else null."""
        position = pc.index_in(rows.column("id"), value_set=self.table.column("id"))
        labels = self.table.column("human_label").take(position)
        same = pc.equal(self.table.column("sha256").take(position), rows.column("sha256")).fill_null(False)
        chosen = pc.if_else(same, labels, pa.scalar(None, pa.string()))
        return chosen.combine_chunks() if isinstance(chosen, pa.ChunkedArray) else chosen


def human_labels(since: str, storage_options: dict[str, Any] | None = None) -> HumanLabels | None:
    """The labels people gave the rows of the earlier OUT `since` (its decisions, then its own
    `human_label` column); None when there are none."""
    rows = CommittedRows(since, storage_options)
    units = sorted(rows.parts)
    carries = bool(units) and _has_human_label(rows, units[0])
    if not carries and not decision_files(since, storage_options):
        return None  # the common night: no Arrow work at all (no pandas probe: batchrun.arrow)
    decided = labelled(read_decisions(since, storage_options))
    pieces = [
        decided.select(["id", "sha256", "decided_label"]).rename_columns(["id", "sha256", "human_label"])
    ]
    if carries:
        for unit in units:
            carried = rows.read_unit(unit, columns=["id", "sha256", HUMAN_LABEL.name])
            carried = carried.filter(pc.is_valid(carried.column(HUMAN_LABEL.name)))
            pieces.append(carried.cast(pieces[0].schema))
    table = pa.concat_tables(pieces)
    table = table.filter(pc.is_valid(table.column("sha256")))
    if table.num_rows == 0:
        return None
    # the first row per id wins: the decisions come before the carried column
    first = pc.index_in(table.column("id").unique(), value_set=table.column("id"))
    return HumanLabels(table.take(first))


def _has_human_label(rows: CommittedRows, unit: int) -> bool:
    import pyarrow.parquet as pq

    with storage.open_input(storage.join(rows.out, rows.parts[unit].file), rows.storage_options) as handle:
        return HUMAN_LABEL.name in pq.ParquetFile(handle).schema_arrow.names
