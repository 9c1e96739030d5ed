"""The review queue of an OUT: its flagged rows, less those a person already decided on.

Read through the one reader (`CommittedRows`); decisions through `skutag.decisions`. A row is
looked up by id only: the page can ask for nothing but the rows (and so the images) OUT names.
For a model with attribute heads (the card in the parts' metadata) each row carries its heads'
predicted values (`<name>`, `<name>_score`), and a decision may carry the values a person
confirmed or set per head (`decided_attributes`), checked against the card's heads.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pyarrow.compute as pc
from skutag.batchrun.commit.reader import CommittedRows

from skutag.decisions import Decision, append_decision, now, read_decisions
from skutag.errors import InputError

COLUMNS = ["id", "uri", "sha256", "label", "score", "topk_labels", "topk_scores", "review_reason"]


class ReviewQueue:
    """The pending flagged rows of OUT, and the one place decisions are recorded (thread-safe)."""

    def __init__(self, out: str, who: str, storage_options: dict[str, Any] | None = None):
        self.out, self.who, self.storage_options = out, who, storage_options
        dataset = CommittedRows(out, storage_options).dataset()
        if "review" not in dataset.schema.names:
            raise InputError(
                f"{out} has no review columns: the model's card has no review section (export a model "
                "trained by this version, or review nothing)"
            )
        card = json.loads((dataset.schema.metadata or {}).get(b"skutag.card", b"{}"))
        self.classes: list[str] = list(card.get("classes", []))
        # the attribute heads: name, kind and values (the card's order)
        self.heads: list[dict[str, Any]] = [
            {"name": h["name"], "kind": h["kind"], "values": list(h["values"])}
            for h in card.get("attributes") or []
        ]
        columns = COLUMNS + [c for h in self.heads for c in (h["name"], h["name"] + "_score")]
        table = dataset.to_table(columns=[*columns, "review"])
        flagged = table.filter(pc.equal(table.column("review"), True)).select(columns)
        decided = set(read_decisions(out, storage_options).column("id").to_pylist())
        self.rows: dict[str, dict[str, Any]] = {
            row["id"]: row for row in flagged.to_pylist() if row["id"] not in decided
        }
        self.decided_before = len(decided)
        self.decided_now = 0
        self._lock = threading.Lock()

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.rows.values())

    def get(self, row_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self.rows.get(row_id)

    def decide(self, row_id: str, decision: str, label: str | None, attributes: Any = None) -> int:
        """Record a decision on a pending row (written to OUT/_review/ before this returns); rows left.
        `attributes`: {name: value or null} / {name: [values]} per head the person confirmed or set."""
        with self._lock:
            row = self.rows.get(row_id)
            if row is None:
                raise KeyError(row_id)
            decided = None
            if decision == "not_product":
                label = None
            elif label not in self.classes:
                raise ValueError(f"unknown label {label!r}")
            else:
                decision = "accept" if label == row["label"] else "correct"
                decided = self._attributes(attributes)
            append_decision(
                self.out,
                Decision(
                    id=row_id,
                    uri=row["uri"],
                    sha256=row["sha256"],
                    predicted_label=row["label"],
                    decision=decision,
                    decided_label=label,
                    who=self.who,
                    decided_at=now(),
                    decided_attributes=decided,
                ),
                self.storage_options,
            )
            del self.rows[row_id]
            self.decided_now += 1
            return len(self.rows)

    def _attributes(self, attributes: Any) -> str | None:
        """The decision's attribute values as stored (JSON), checked against the card's heads (ValueError)."""
        if attributes is None:
            return None
        heads = {h["name"]: h for h in self.heads}
        if not isinstance(attributes, dict) or not set(attributes) <= set(heads):
            raise ValueError(f"attributes must be an object over the heads {', '.join(heads) or '(none)'}")
        for name, value in attributes.items():
            head = heads[name]
            if head["kind"] == "single":
                if value is not None and value not in head["values"]:
                    raise ValueError(f"{name}: unknown value {value!r}")
            elif not isinstance(value, list) or not set(value) <= set(head["values"]):
                raise ValueError(f"{name}: expected a list of {', '.join(head['values'])}")
        return json.dumps(attributes, sort_keys=True) if attributes else None
