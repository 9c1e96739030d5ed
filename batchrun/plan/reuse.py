"""What must match for a run to reuse rows: the run key and every rule that compares it, in one place.

Two kinds of reuse, two sets of fields of one run key (`run_key`):

- **Continue an OUT** (a rerun, a resume, another shard): `RESUME_FIELDS` equal, and for the
  shard's own commit log the shard index too (`resume_problem`; used by `out.prepare_out`).
- **Copy rows of an earlier run** (`--since PREV_OUT`, `--retry-errors`): `MODEL_FIELDS` equal
  (`copy_problem`; used by `commit.reader.Previous`), then per input `input_verdicts`: the same id
  and uri, and the same version when the listing gave one (S3 ETag, GCS generation, HTTP ETag /
  Last-Modified, local size:mtime_ns). An input without a version is read (not decoded) and
  reused only when its sha256 equals the earlier row's (`needs_sha256`). Equal plan ids prove
  nothing (an unchanged URL list gives the same plan every night while the bytes behind it
  change); only `--retry-errors`, whose earlier run is this very OUT and snapshot, may take a
  version-less input as unchanged without reading it.

A row is copied only when what made it still holds: error rows of retryable kinds are read
again, and so are rows whose kind a setting decided (`SETTING_KINDS`: `too_large` under
another `--max-bytes`, `unsupported_format` under other optional decoders) when that setting
differs tonight (`stale_kinds`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from skutag.formats import decoders

from ..arrow import bools

if TYPE_CHECKING:
    from ..options import RunOptions
    from ..predict.model import ModelContract
    from .catalog import Plan

# Fields of the run key that must be equal to copy an earlier run's rows (model and output shape).
MODEL_FIELDS = ("model_sha256", "model", "topk", "embeddings")
# Fields that must be equal to continue an existing OUT (checked in this order).
RESUME_FIELDS = ("model_sha256", "plan_id", "shard_count", "topk", "embeddings", "model")
# Settings that decide some error rows (`row_settings` of the run key) -> the error kinds they decide:
# a row of such a kind made under another value is read again, not copied.
SETTING_KINDS = {"max_bytes": ("too_large",), "decoders": ("unsupported_format",)}


def run_key(contract: ModelContract, plan: Plan, options: RunOptions) -> dict[str, Any]:
    """The run key: what a commit log records, and what `RESUME_FIELDS` / `MODEL_FIELDS` compare."""
    card = contract.card
    return {
        "model_sha256": contract.sha256,
        "plan_id": plan.plan_id,
        "inputs_total": plan.total,
        **options.key_values(),  # the RunOptions fields marked `key`: shard, topk, embeddings
        "row_settings": {"max_bytes": options.max_bytes, "decoders": decoders()},
        "model": {
            "classes": list(card.classes),
            "image_size": card.image_size,
            "resize_size": card.resize_size,
            "interpolation": card.interpolation,
            "mean": list(card.mean),
            "std": list(card.std),
            "scores_output": contract.scores_output,
            "softmax": contract.apply_softmax,
        },
    }


def resume_problem(existing: dict[str, Any], wanted: dict[str, Any], *, same_shard: bool) -> str | None:
    """Why an OUT with run key `existing` cannot be continued by a run with key `wanted` (None: it can)."""
    fields = RESUME_FIELDS + (("shard_index",) if same_shard else ())
    for name in fields:
        if existing.get(name) != wanted.get(name):
            return f"{name.replace('_', ' ')} {_short(existing.get(name))} != {_short(wanted.get(name))}"
    return None


def copy_problem(earlier: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """Why rows of a run with key `earlier` cannot be copied into a run with key `wanted` (None: they can)."""
    for name in MODEL_FIELDS:
        if earlier.get(name) != wanted.get(name):
            return f"its {name.replace('_', ' ')} differs"
    return None


def stale_kinds(earlier: dict[str, Any], wanted: dict[str, Any]) -> frozenset[str]:
    """Error kinds whose rows in a run with key `earlier` were decided by a setting that differs in a
    run with key `wanted` (a key without `row_settings`, 0.3's, differs in every setting)."""
    before, now = earlier.get("row_settings") or {}, wanted.get("row_settings") or {}
    return frozenset(
        kind for name, kinds in SETTING_KINDS.items() if before.get(name) != now.get(name) for kind in kinds
    )


def input_verdicts(
    old_uri: pa.Array, old_version: pa.Array, uri: pa.Array, version: pa.Array, *, snapshot: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per input (arrays aligned row by row; the old ones null where the earlier run had no such id):
    (unchanged, needs_sha256) as bool arrays; an input that is neither changed.

    Unchanged: the same uri and the same non-null version (or `snapshot`: the earlier rows are this
    very OUT's, `--retry-errors`, read from the same plan). Same uri, both versions null: only its
    sha256 can tell (`needs_sha256`).
    """
    same_uri = bools(pc.equal(old_uri, uri))
    both_null = bools(pc.and_(pc.is_null(old_version), pc.is_null(version)))
    same_version = bools(pc.equal(old_version, version)) | both_null
    same = same_uri & same_version
    if snapshot:
        return same, np.zeros(len(same), bool)
    return same & ~both_null, same & both_null


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) > 38:  # a sha256: its first 12 characters, quotes balanced
        return json.dumps(value[:12] + "...")
    return json.dumps(value, sort_keys=True)
