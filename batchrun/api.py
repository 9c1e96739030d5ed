"""`run_catalog` and `plan_catalog`: the Python API of `skutag run` and `skutag plan`.

Order of events: read the model's contract, take the shard's lease (`commit.lease`: one
live process per shard, exit 75 otherwise), read or make the plan (`OUT/_plan/`, listed
once), prepare OUT (resume / refuse / already complete), work out what the shard still has
to do (`--since` and `--retry-errors` rows to copy, distinct images to decode), hand it to
the engine chosen from `engines.base.ENGINES` with one `UnitWriter`, then write `_summary.json`,
the shard's `_SUCCESS[.TAG]` and, when every unit of the plan is committed, `OUT/_SUCCESS`
(`commit.reader`). A systemic fault (`commit.guard`, a model that raises) stops the run
with exit 4 before anything of it is published.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from skutag import __version__, storage
from skutag.errors import InputError
from skutag.fsio import check_output_dir
from skutag.runtime import check_device

from .commit.human import human_labels
from .commit.lease import Lease
from .commit.out import (
    GLOBAL_SUCCESS,
    CommitEntry,
    CommitLog,
    OutputNames,
    prepare_out,
    read_summary,
    remove_run,
)
from .commit.reader import (
    Previous,
    is_complete,
    publish_if_complete,
    remove_foreign_parts,
    require_complete,
)
from .commit.signals import Interrupted, Signalled, signal_name, stop_on_signals
from .commit.writer import UnitWriter, prediction_schema
from .engines.base import get_engine
from .options import RETRYABLE_KINDS, RunOptions
from .plan.catalog import Plan, ensure_plan, plan_exists, read_plan
from .plan.incremental import removed_inputs
from .plan.reuse import run_key
from .plan.work import prepare_work
from .predict.model import ForeignPreprocessing, ModelContract, read_contract
from .predict.review import REVIEW_KEY

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a run did. Counts cover the whole shard (resumed parts included); rates and times this attempt."""

    out: str
    rows: int
    ok: int
    errors: int
    errors_by_kind: dict[str, int]
    inputs_total: int  # rows of the whole plan
    shard: str
    shard_rows: int
    skipped: dict[str, int]  # what listing passed over: hidden, not_image, revisited_dirs, broken_links
    duplicates: int  # (id, uri) pairs listed more than once, kept once
    reused: int  # rows copied from --since / an earlier attempt's error rows kept
    new: int
    changed: int
    retried: int
    removed: int | None  # inputs of --since that are gone (whole plan); None without --since
    predicted: int
    decoded: int  # images decoded (ids that share an image share one decode), every attempt of the shard
    resumed_rows: int  # rows committed by an earlier attempt and kept now
    processed_rows: int  # rows committed by this attempt
    images_per_s: float  # images this attempt decoded / wall_s (start-up, planning and writing included)
    wall_s: float
    decode_s: float
    wait_s: float
    inference_s: float
    write_s: float
    device: str
    providers: list[str]
    fallback_reason: str | None
    batch_size: int
    workers: int
    worker_restarts: int
    decode: str  # where JPEGs were decoded: cpu | cuda
    gpu_decoded: int  # images decoded on the GPU
    gpu_decode_s: float
    cpu_fallbacks: int  # JPEGs the GPU handed back to the CPU path
    engine: str
    model: str
    model_sha256: str
    plan_id: str
    max_error_rate: float
    error_rate: float
    exceeded_error_rate: bool
    since_note: str | None = None
    already_complete: bool = False
    complete: bool = False  # OUT/_SUCCESS: every unit of the plan is committed (every shard)
    repeats: int = 0  # task deliveries the writer dropped (a task id delivered before)
    parts: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    skutag_version: str = __version__
    attempt_decoded: int = 0  # images decoded by this attempt (`decoded` counts every attempt)
    review: dict[str, Any] | None = None  # the card's review section (its class statistics stay out of parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        """A stored `_summary.json`, written by this or another version: unknown fields are ignored,
        missing ones are None (or the field's default)."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {name: value for name, value in data.items() if name in known}
        for name, f in known.items():
            no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if name not in values and no_default:
                values[name] = None
        return cls(**values)


def plan_catalog(
    sources: list[str], out: str, *, part_rows: int | None = None, overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> Plan:  # fmt: skip
    """`skutag plan`: list SOURCE... once into OUT/_plan/ (or return the plan that is there)."""
    if not storage.is_remote(out):
        check_output_dir(out)
    if overwrite:
        remove_run(out, storage_options)
    return ensure_plan(sources, out, part_rows=part_rows, storage_options=storage_options)


def run_catalog(
    model: str | os.PathLike,
    sources: list[str],
    out: str | os.PathLike,
    options: RunOptions | None = None,
    *,
    foreign: ForeignPreprocessing | None = None,
) -> RunSummary:
    """Predict every planned input with `model` into Parquet under `out`; see the module docstring.

    Returns the summary; the caller decides what `exceeded_error_rate` means (the CLI exits 3).
    """
    options = options or RunOptions()
    started, started_at = time.perf_counter(), _now()
    out = os.fspath(out)
    if options.topk < 1:
        raise InputError("--topk must be at least 1")
    if not storage.is_remote(out):
        check_output_dir(out)  # a file, a path under a file, `-`, no permission: one line, before any work
    contract = read_contract(model, foreign)
    check_device(contract.card, options.device, contract.path)  # before OUT is touched
    if options.engine == "ray" and options.decode == "gpu":
        raise InputError("--decode gpu is for --engine local; Ray's decode tasks run on the CPU")
    if options.embeddings and contract.embedding_dim is None:
        raise InputError(
            f"--embeddings: {contract.path} has no `embedding` output (export it with --embeddings)"
        )
    options = options.replace(topk=min(options.topk, contract.card.num_classes))
    if options.since:  # before OUT is touched: a refused --since leaves no plan behind
        if not plan_exists(options.since, options.storage_options):
            raise InputError(f"--since {options.since}: not a skutag run (no _plan/_PLAN)")
        if not options.since_incomplete:
            require_complete(options.since, "--since", options.storage_options)
    storage.makedirs(out)
    names = OutputNames(options.shard)
    with stop_on_signals() as fired:
        try:
            lease = Lease.acquire(
                storage.join(out, names.lease), options.lease_ttl_s, options.storage_options
            )
        except (Signalled, Exception):
            if not fired:
                raise
            raise Interrupted(f"{signal_name(fired)}: nothing was started; rerun to start") from None
        kept: list[CommitLog] = []  # this shard's commit log, once read: what an interrupted run kept
        try:
            return _run_shard(contract, sources, out, names, lease, options, started, started_at, kept)
        except (Signalled, Exception) as exc:
            if (
                not fired
            ):  # an ordinary failure; after a signal, whatever it raised on its way is the signal's
                raise
            raise Interrupted(
                f"{signal_name(fired)}: {len(kept[0].parts) if kept else 0} committed part(s) of this shard "
                "kept, the lease released, nothing published as complete; rerun to resume"
            ) from exc
        finally:
            lease.release()


def _run_shard(contract: ModelContract, sources: list[str], out: str, names: OutputNames, lease: Lease,
               options: RunOptions, started: float, started_at: str, kept: list[CommitLog]) -> RunSummary:  # fmt: skip
    if options.overwrite and not options.shard.sharded:
        remove_run(out, options.storage_options)
    plan = ensure_plan(sources, out, part_rows=options.part_rows, storage_options=options.storage_options)
    key = run_key(contract, plan, options)
    prepared = prepare_out(
        out, names, key, plan, overwrite=options.overwrite, storage_options=options.storage_options
    )
    if prepared.complete and not options.retry_errors:
        done = read_summary(out, names, options.storage_options)
        exceeded = (done.get("error_rate") or 0.0) > options.max_error_rate
        done.update(
            already_complete=True, max_error_rate=options.max_error_rate, exceeded_error_rate=exceeded
        )
        publish_if_complete(out, plan, key, options.storage_options)  # a shard of an older version
        done["complete"] = is_complete(out, options.storage_options)
        return RunSummary.from_dict(done)
    commit_log = prepared.commit_log
    kept.append(commit_log)  # what an interrupted run reports as kept
    previous, since_note = _previous(out, key, commit_log, options)
    units = plan.shard_units(options.shard.index, options.shard.count)
    committed = commit_log.committed_units()
    retry_kinds = previous.retry_kinds(key) if previous is not None else RETRYABLE_KINDS
    if options.retry_errors:
        committed -= _with_errors_of(commit_log, retry_kinds)
        if committed != commit_log.committed_units():  # parts are about to be rewritten in place:
            for name in (GLOBAL_SUCCESS, names.success):  # nothing stands as complete meanwhile
                storage.remove(storage.join(out, name), options.storage_options)
    pending = [unit for unit in units if unit.number not in committed]
    work = prepare_work(
        plan,
        pending,
        previous,
        options.storage_options,
        retry_kinds,
        options.max_bytes,
        options.decode_timeout_s,
    )
    human = human_labels(options.since, options.storage_options) if options.since else None
    schema = prediction_schema(
        contract.embedding_dim if options.embeddings else None,
        file_metadata(contract, options),
        labelled=plan.labelled > 0,
        human=human is not None,
    )
    writer = UnitWriter(
        out, names, commit_log, plan, work, schema=schema, classes=list(contract.card.classes),
        previous=previous, storage_options=options.storage_options, human=human, lease=lease,
    )  # fmt: skip
    stats = get_engine(options.engine)(contract, work, writer, options)
    stats.repeats = writer.repeats
    removed = None
    if options.since and previous is not None:
        removed = removed_inputs(previous.plan, plan, options.storage_options)
    summary = _summarise(out, commit_log, contract, plan, units, stats, options, removed, since_note,
                         started, started_at)  # fmt: skip
    lease.check()
    body = json.dumps(summary.to_dict(), indent=2).encode()
    storage.write_bytes(storage.join(out, names.summary), body, options.storage_options)
    remove_foreign_parts(out, plan, options.storage_options)  # before any _SUCCESS
    storage.write_bytes(storage.join(out, names.success), b"", options.storage_options)
    summary.complete = publish_if_complete(out, plan, key, options.storage_options)
    if summary.complete:  # known only now (every shard's log is read): the stored summary says it too
        body = json.dumps(summary.to_dict(), indent=2).encode()
        storage.write_bytes(storage.join(out, names.summary), body, options.storage_options)
    return summary


def _previous(out: str, key: dict[str, Any], commit_log: CommitLog, options: RunOptions):
    """The earlier run whose rows this one may copy (--since, or OUT itself for --retry-errors)."""
    source = options.since or (out if options.retry_errors else None)
    if source is None:
        return None, None
    previous = Previous(source, options.storage_options)
    problem = previous.unusable(key)
    if problem:
        note = f"--since {source}: reusing nothing, {problem}"
        log.info(note)  # the summary carries it and the CLI prints it once
        return None, note
    return previous, None


def _with_errors_of(commit_log: CommitLog, kinds: frozenset[str]) -> set[int]:
    return {entry.unit for entry in commit_log.parts if any(kind in kinds for kind in entry.errors_by_kind)}


def file_metadata(contract: ModelContract, options: RunOptions) -> dict[str, str]:
    """Every part's footer: the card without its review class statistics (they live in the model file and
    `_summary.json`), the review thresholds the review columns were computed with, the model's sha256,
    the run options and the version: a few KB however many classes and features the model has."""
    card = contract.card
    metadata = {
        "skutag.card": card.replace(review=None).to_json(),
        "skutag.model_sha256": contract.sha256,
        "skutag.run_options": json.dumps(options.record(), sort_keys=True),
        "skutag.version": __version__,
    }
    if card.review is not None:
        metadata[REVIEW_KEY] = json.dumps({k: v for k, v in card.review.items() if k != "class_means"})
    return metadata


def _summarise(out, commit_log: CommitLog, contract, plan: Plan, units, stats, options: RunOptions, removed,
               since_note, started, started_at) -> RunSummary:  # fmt: skip
    counts: Counter = Counter()
    totals: Counter = Counter()
    for entry in commit_log.parts:
        counts.update(entry.counts)
        totals.update({name: getattr(entry, name) for name in CommitEntry.TOTALS})
    ok = counts.pop("ok", 0)
    by_kind = {kind.split(":", 1)[1]: n for kind, n in sorted(counts.items())}
    errors = sum(by_kind.values())
    rows = ok + errors
    wall = time.perf_counter() - started
    error_rate = errors / rows if rows else 0.0
    return RunSummary(
        out=out,
        rows=rows,
        ok=ok,
        errors=errors,
        errors_by_kind=by_kind,
        inputs_total=plan.total,
        shard=str(options.shard),
        shard_rows=sum(unit.rows for unit in units),
        skipped=dict(plan.listing),
        duplicates=plan.duplicates,
        reused=totals["reused"],
        new=totals["new"],
        changed=totals["changed"],
        retried=totals["retried"],
        removed=removed,
        predicted=totals["predicted"],
        decoded=totals["decoded"],
        resumed_rows=rows - stats.rows,
        processed_rows=stats.rows,
        images_per_s=stats.tasks / wall if wall > 0 else 0.0,
        attempt_decoded=stats.tasks,
        review=contract.card.review,
        wall_s=wall,
        decode_s=stats.decode_s,
        wait_s=stats.wait_s,
        inference_s=stats.inference_s,
        write_s=stats.write_s,
        device=stats.device,
        providers=stats.providers,
        fallback_reason=stats.fallback_reason,
        batch_size=options.batch_size,
        workers=stats.workers,
        worker_restarts=stats.restarts,
        decode=stats.decode,
        gpu_decoded=stats.gpu_decoded,
        gpu_decode_s=stats.gpu_decode_s,
        cpu_fallbacks=stats.cpu_fallbacks,
        engine=options.engine,
        model=os.path.abspath(contract.path),  # `skutag index` may run from another folder
        model_sha256=contract.sha256,
        plan_id=plan.plan_id,
        max_error_rate=options.max_error_rate,
        error_rate=error_rate,
        exceeded_error_rate=error_rate > options.max_error_rate,
        since_note=since_note,
        parts=len(commit_log.parts),
        repeats=stats.repeats,
        options=options.record(),
        started_at=started_at,
        finished_at=_now(),
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


__all__ = ["RunSummary", "plan_catalog", "read_plan", "run_catalog"]
