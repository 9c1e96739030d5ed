"""The nightly change report's figures: what `skutag report OUT [--since PREV]` puts in report.json.

Every aggregate is computed with Arrow (`pyarrow.compute`, `Table.group_by`, `Table.join`) over
the committed parts, read through the one reader (`batchrun.commit.reader.CommittedRows`),
never a glob; only the few columns an aggregate needs are read, and the rows shown with their
details (examples of label changes, the review queue, errors) are bounded and read in a second,
filtered pass. The page itself is `pages.render`; the thumbnails `pages.thumbs`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from skutag.batchrun.commit.reader import CommittedRows

from skutag import storage
from skutag.decisions import read_decisions

SHIFTS = 10  # labels listed in "largest shifts"
CHANGE_PAIRS = 20  # from -> to pairs listed
EXAMPLES = 4  # example rows per change pair / per review reason
ERRORS_LISTED = 50
DETAIL_COLUMNS = ["id", "uri", "label", "score", "topk_labels", "topk_scores", "error_kind", "error"]


@dataclass(frozen=True)
class Limits:
    shifts: int = SHIFTS
    change_pairs: int = CHANGE_PAIRS
    examples: int = EXAMPLES
    errors: int = ERRORS_LISTED


DEFAULT_LIMITS = Limits()


def read_rows(out: str, columns: list[str], storage_options: dict[str, Any] | None = None) -> pa.Table:
    """The named columns (those OUT has) of every committed row of OUT."""
    dataset = CommittedRows(out, storage_options).dataset()
    present = [c for c in columns if c in dataset.schema.names]
    return dataset.to_table(columns=present)


def build_report(
    out: str,
    since: str | None = None,
    storage_options: dict[str, Any] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """report.json's content (thumbnail paths are filled in by `pages.thumbs`)."""
    rows = CommittedRows(out, storage_options)
    dataset = rows.dataset()
    names = dataset.schema.names
    wanted = ["id", "status", "error_kind", "label", "sha256", "review", "review_reason", "human_label"]
    table = dataset.to_table(columns=[c for c in wanted if c in names])
    report: dict[str, Any] = {
        "out": out,
        "since": since,
        "complete": rows.complete,
        "counts": counts(table, summaries(out, storage_options)),
        "card": card_summary(dataset.schema.metadata or {}),
        "labels": label_shares(table),
    }
    details: set[str] = set()
    if since is not None:
        previous = read_rows(since, ["id", "label", "sha256"], storage_options)
        report["counts"].update(since_counts(table, previous))
        report["shifts"] = shifts(report["labels"], label_shares(previous), limits.shifts)
        report["changes"] = changes(table, previous, limits)
        details |= {r["id"] for pair in report["changes"] for r in pair["examples"]}
    report["review"] = review_queue(table, limits.examples) if "review" in names else None
    if report["review"]:
        details |= {r["id"] for reason in report["review"]["reasons"] for r in reason["examples"]}
    report["errors"] = error_ids(table, limits.errors)
    details |= set(report["errors"])
    report["agreement"] = agreement(table, read_decisions(out, storage_options))
    report["rows"] = detail_rows(dataset, sorted(details))
    return report


def summaries(out: str, storage_options: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every shard's `_summary[.TAG].json` in OUT."""
    found = []
    for name in storage.list_names(out, storage_options):
        if name.startswith("_summary") and name.endswith(".json"):
            found.append(json.loads(storage.read_bytes(storage.join(out, name), storage_options)))
    return found


def counts(table: pa.Table, shard_summaries: list[dict[str, Any]]) -> dict[str, Any]:
    status = table.column("status")
    errors = table.filter(pc.equal(status, "error")).column("error_kind")
    by_kind = {row["values"]: row["counts"] for row in pc.value_counts(errors).to_pylist()}
    result: dict[str, Any] = {
        "rows": table.num_rows,
        "ok": pc.sum(pc.equal(status, "ok")).as_py() or 0,
        "errors": len(errors),
        "errors_by_kind": dict(sorted(by_kind.items(), key=lambda kv: (-kv[1], str(kv[0])))),
    }
    for field in ("reused", "new", "changed", "retried", "removed"):
        values = [s.get(field) for s in shard_summaries if s.get(field) is not None]
        result[field] = sum(values) if values else None
    return result


def label_shares(table: pa.Table) -> dict[str, dict[str, float]]:
    """label -> {"rows": n, "share": n / ok rows}, most frequent first."""
    labels = table.column("label").drop_null()
    total = len(labels)
    pairs = pc.value_counts(labels).to_pylist()
    pairs.sort(key=lambda p: (-p["counts"], p["values"]))
    return {p["values"]: {"rows": p["counts"], "share": p["counts"] / total} for p in pairs}


def shifts(tonight: dict[str, Any], before: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """The labels whose share moved most, in percentage points (tonight minus before)."""
    moved = []
    for label in set(tonight) | set(before):
        now_share = tonight.get(label, {}).get("share", 0.0)
        then_share = before.get(label, {}).get("share", 0.0)
        moved.append(
            {
                "label": label,
                "before": then_share,
                "tonight": now_share,
                "rows_before": before.get(label, {}).get("rows", 0),
                "rows_tonight": tonight.get(label, {}).get("rows", 0),
                "points": 100.0 * (now_share - then_share),
            }
        )
    moved.sort(key=lambda m: (-abs(m["points"]), m["label"]))
    return moved[:limit]


def since_counts(table: pa.Table, previous: pa.Table) -> dict[str, int]:
    ids, before = table.select(["id"]), previous.select(["id"])
    new = ids.join(before, "id", join_type="left anti").num_rows
    removed = before.join(ids, "id", join_type="left anti").num_rows
    return {"new_since": new, "removed_since": removed}


def changes(table: pa.Table, previous: pa.Table, limits: Limits) -> list[dict[str, Any]]:
    """Rows whose label differs from PREV's (same id), as from -> to pairs with example ids."""
    before = previous.select(["id", "label"]).rename_columns(["id", "label_before"])
    joined = table.select(["id", "label"]).join(before, "id", join_type="inner")
    moved = joined.filter(
        pc.not_equal(joined.column("label"), joined.column("label_before")).fill_null(False)
    )
    if moved.num_rows == 0:
        return []
    grouped = moved.group_by(["label_before", "label"]).aggregate([("id", "count")])
    pairs = sorted(grouped.to_pylist(), key=lambda p: (-p["id_count"], p["label_before"], p["label"]))
    listed = []
    for pair in pairs[: limits.change_pairs]:
        match = pc.and_(
            pc.equal(moved.column("label_before"), pair["label_before"]),
            pc.equal(moved.column("label"), pair["label"]),
        )
        examples = moved.filter(match).column("id").slice(0, limits.examples).to_pylist()
        listed.append(
            {
                "from": pair["label_before"],
                "to": pair["label"],
                "rows": pair["id_count"],
                "examples": [{"id": i} for i in sorted(examples)],
            }
        )
    return listed


def review_queue(table: pa.Table, examples: int) -> dict[str, Any]:
    """Rows flagged for review, by reason (a row with two reasons counts under its joined reason)."""
    flagged = table.filter(pc.equal(table.column("review"), True))
    if flagged.num_rows == 0:
        return {"rows": 0, "reasons": []}
    grouped = flagged.group_by("review_reason").aggregate([("id", "count")]).to_pylist()
    grouped.sort(key=lambda g: (-g["id_count"], str(g["review_reason"])))
    reasons = []
    for group in grouped:
        reason = group["review_reason"]
        match = (
            pc.equal(flagged.column("review_reason"), reason)
            if reason
            else pc.is_null(flagged.column("review_reason"))
        )
        ids = flagged.filter(match).column("id").slice(0, examples).to_pylist()
        reasons.append({"reason": reason, "rows": group["id_count"], "examples": [{"id": i} for i in ids]})
    return {"rows": flagged.num_rows, "reasons": reasons}


def error_ids(table: pa.Table, limit: int) -> list[str]:
    return table.filter(pc.equal(table.column("status"), "error")).column("id").slice(0, limit).to_pylist()


def agreement(table: pa.Table, decisions: pa.Table) -> dict[str, Any]:
    """How often people agreed with the model: review decisions of this OUT, and the `human_label` column
    a `--since` night carried (rows whose image was decided on and has not changed)."""
    kinds = {k: 0 for k in ("accept", "correct", "not_product")}
    for row in pc.value_counts(decisions.column("decision")).to_pylist():
        kinds[row["values"]] = row["counts"]
    labelled = kinds["accept"] + kinds["correct"]
    result: dict[str, Any] = {
        "decisions": decisions.num_rows,
        **kinds,
        "agreement": kinds["accept"] / labelled if labelled else None,
    }
    if "human_label" in table.column_names:
        human = table.filter(pc.is_valid(table.column("human_label")))
        same = pc.sum(pc.equal(human.column("label"), human.column("human_label")).fill_null(False)).as_py()
        result["human_labelled"] = human.num_rows
        result["human_agree"] = same or 0
    return result


def card_summary(metadata: dict[bytes, bytes]) -> dict[str, Any] | None:
    raw = metadata.get(b"skutag.card")
    if raw is None:
        return None
    card = json.loads(raw)
    return {
        "arch": card.get("arch"),
        "classes": card.get("classes", []),
        "image_size": card.get("image_size"),
        "precision": card.get("precision"),
        "metrics": {k: v for k, v in (card.get("metrics") or {}).items() if isinstance(v, (int, float))},
        "created_at": card.get("created_at"),
        "review": bool(card.get("review")),
        "model_sha256": (metadata.get(b"skutag.model_sha256") or b"").decode() or None,
    }


def detail_rows(dataset, ids: list[str]) -> dict[str, dict[str, Any]]:
    """id -> the shown columns of the few rows the report lists (one filtered pass over the parts)."""
    if not ids:
        return {}
    import pyarrow.dataset as ds

    names = dataset.schema.names
    columns = [c for c in [*DETAIL_COLUMNS, "review_reason", "human_label"] if c in names]
    table = dataset.to_table(columns=columns, filter=ds.field("id").isin(ids))
    return {row["id"]: row for row in table.to_pylist()}
