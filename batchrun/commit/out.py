"""OUT's control files and what they make of a rerun: resume, refuse, or say it is done.

OUT (a local folder or an `s3://` / `gs://` prefix) holds `_plan/`, one `part-NNNNN.parquet`
per unit of the plan (the same name on every attempt and in every engine, so a redone unit
replaces its file instead of adding one), and per shard the commit log `_commits[.TAG].json`
(the run key and one `CommitEntry` per committed part; 0.3 and earlier named it
`_manifest[.TAG].json`, which is still read, and replaced by `_commits` when a run of this
version takes the shard over), a lease
`_lease[.TAG].json` (`batchrun.commit.lease`), `_summary[.TAG].json` and `_SUCCESS[.TAG]`,
written last; `OUT/_SUCCESS` once every unit of the plan is committed, whichever shard
finishes last. Everything but the parts starts with `_`, so OUT reads as one table.

A commit log never goes backwards: `CommitLog.save` is a compare-and-swap on the stored log's
version. Its first save in a process keeps the units another process of the same run
committed; every later save is conditioned on the version this process wrote last, so a
zombie whose shard was taken over (the newcomer rewrote the log) writes nothing and stops.
A shard's `_SUCCESS.TAG` is trusted only when its log covers every unit of the shard.

A rerun with the same key skips committed units. A different key is refused unless
`--overwrite`, which removes this shard's files only (and, for an unsharded run, the plan
and every other skutag file in OUT): another shard's finished parts are never touched.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from skutag import conditional, storage
from skutag.errors import InputError, LeaseHeld

from ..plan.catalog import PLAN_DIR, PLAN_FILE, Plan
from ..plan.reuse import resume_problem
from ..plan.shard import Shard

log = logging.getLogger(__name__)

FORMAT = 2
COMMIT_LOG = "_commits"  # the commit log's stem: _commits[.TAG].json
LEGACY_COMMIT_LOG = "_manifest"  # its stem up to 0.3: read, never written
PART = re.compile(r"part-(\d{5,})\.parquet")


def part_name(unit: int) -> str:
    return f"part-{unit:05d}.parquet"


@dataclass(frozen=True)
class OutputNames:
    """The control files a run (or one shard of it) owns inside OUT."""

    shard: Shard

    def _tagged(self, stem: str, suffix: str = "") -> str:
        return f"{stem}.{self.shard.tag}{suffix}" if self.shard.sharded else f"{stem}{suffix}"

    @property
    def commit_log(self) -> str:
        return self._tagged(COMMIT_LOG, ".json")

    @property
    def legacy_commit_log(self) -> str:
        """This shard's commit log as 0.3 and earlier named it (read, then replaced)."""
        return self._tagged(LEGACY_COMMIT_LOG, ".json")

    @property
    def lease(self) -> str:
        return self._tagged("_lease", ".json")

    @property
    def summary(self) -> str:
        return self._tagged("_summary", ".json")

    @property
    def success(self) -> str:
        return self._tagged("_SUCCESS")


GLOBAL_SUCCESS = "_SUCCESS"


@dataclass(frozen=True)
class CommitEntry:
    """One committed part, as the commit log lists it: written by `commit.writer`, read here only."""

    unit: int
    file: str  # part-NNNNN.parquet, relative to OUT
    rows: int
    counts: dict[str, int]  # "ok" and "error:KIND" -> rows
    reused: int = 0  # rows copied from --since / kept error rows
    new: int = 0
    changed: int = 0
    retried: int = 0
    predicted: int = 0
    decoded: int = 0  # decode tasks (distinct images)

    TOTALS = ("reused", "new", "changed", "retried", "predicted", "decoded")

    @property
    def errors_by_kind(self) -> dict[str, int]:
        """error kind -> rows of this part with that kind."""
        return {kind.split(":", 1)[1]: n for kind, n in self.counts.items() if kind.startswith("error:")}

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "file": self.file,
            "rows": self.rows,
            "counts": dict(sorted(self.counts.items())),
            **{name: getattr(self, name) for name in self.TOTALS},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CommitEntry:
        """An entry written by this or an earlier version (a missing total is 0)."""
        return cls(
            unit=int(data["unit"]),
            file=data["file"],
            rows=int(data.get("rows", 0)),
            counts=dict(data.get("counts", {})),
            **{name: int(data.get(name, 0)) for name in cls.TOTALS},
        )


@dataclass
class CommitLog:
    """One shard's commit log (on disk `_commits[.TAG].json`): the run key and its committed parts."""

    key: dict[str, Any]
    parts: list[CommitEntry] = field(default_factory=list)
    legacy_file: str | None = None  # a 0.3 `_manifest[.TAG].json` this log replaces on its next save
    version: str | None = None  # the stored log's version this process last wrote (compare-and-swap)

    def committed_units(self) -> set[int]:
        return {part.unit for part in self.parts}

    def commit(self, entry: CommitEntry) -> None:
        """Record `entry`, replacing an earlier entry of its unit; parts stay in unit order."""
        self.parts = sorted([p for p in self.parts if p.unit != entry.unit] + [entry], key=lambda p: p.unit)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "key": self.key, "parts": [part.to_json() for part in self.parts]}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "commit log") -> CommitLog:
        """A stored log (this version's or 0.3's: the entries did not change); refuses another format."""
        if not isinstance(data, dict) or data.get("format") != FORMAT or "key" not in data:
            found = data.get("format") if isinstance(data, dict) else None
            raise InputError(f"{where} is not a skutag commit log (format {found!r})")
        return cls(data["key"], [CommitEntry.from_json(part) for part in data.get("parts", [])])

    @classmethod
    def read(cls, uri: str, storage_options: dict[str, Any] | None = None) -> CommitLog:
        return cls.from_json(read_json(uri, storage_options), uri)

    def save(
        self,
        out: str,
        names: OutputNames,
        storage_options: dict[str, Any] | None = None,
        *,
        merge: bool = True,
    ) -> None:
        """Write the log as a compare-and-swap on its version (`conditional.write_if`).

        The first save of this process merges the units that the stored log of the same run has and
        this one lacks (`merge=False`: only when this process has just read the stored log and means
        to shorten it). From then on each save is conditioned on the version this process last
        wrote: when another process wrote the log in between (it took this shard over), nothing is
        written and `LeaseHeld` stops this one: a zombie's log never lands."""
        uri = storage.join(out, names.commit_log)
        for _attempt in range(5):
            stored = conditional.read_versioned(uri, storage_options)
            if self.version is not None and (stored is None or stored.version != self.version):
                raise LeaseHeld(
                    f"stopped: {names.commit_log} was written by another process (it took this shard over); "
                    "this process's parts are not recorded, the shard's committed parts are kept"
                )
            if stored is not None and self.version is None and merge:
                self._merge(stored.data, names)
            data = json.dumps(self.to_json(), indent=1).encode()
            version = conditional.write_if(uri, data, stored.version if stored else None, storage_options)
            if version is not None:
                self.version = version
                break
            merge = True  # another writer got in between this read and write: read, merge, try again
        else:
            raise LeaseHeld(f"stopped: {names.commit_log} changed on every try; rerun to resume")
        if self.legacy_file is not None:  # a 0.3 log taken over: `_commits` now says it all
            storage.remove(storage.join(out, self.legacy_file), storage_options)
            self.legacy_file = None

    def _merge(self, data: bytes, names: OutputNames) -> None:
        try:
            stored = json.loads(data)
        except ValueError:
            return
        if not isinstance(stored, dict) or stored.get("key") != self.key:
            return
        known = self.committed_units()
        extra = [
            entry
            for entry in (CommitEntry.from_json(part) for part in stored.get("parts", []))
            if entry.unit not in known
        ]
        if extra:
            log.warning(
                "%s lists %d unit(s) this process did not commit (another process ran this shard); "
                "keeping them", names.commit_log, len(extra),
            )  # fmt: skip
            self.parts = sorted(self.parts + extra, key=lambda p: p.unit)


@dataclass
class Prepared:
    commit_log: CommitLog
    complete: bool  # _SUCCESS exists for this very run: nothing to do


def prepare_out(
    out: str,
    names: OutputNames,
    key: dict[str, Any],
    plan: Plan,
    *,
    overwrite: bool,
    storage_options: dict[str, Any] | None = None,
) -> Prepared:
    """Make OUT ready for this shard: fresh, resumed, or complete; refuse an incompatible OUT."""
    existing = dict(read_commit_logs(out, storage_options))
    own_names = (names.commit_log, names.legacy_commit_log)
    for name, other in existing.items():
        problem = resume_problem(other.key, key, same_shard=name in own_names)
        if problem and not overwrite:
            raise InputError(
                f"{out} holds a different run ({problem}, see {name}); "
                "use another --out or pass --overwrite to replace it"
            )
        if problem and name not in own_names:
            log.warning("%s in %s belongs to a different run; its files are left alone", name, out)
    commit_log = CommitLog(key)
    own = next((name for name in own_names if name in existing), None)  # this version's log first
    if own is not None and not overwrite:
        commit_log.parts = list(existing[own].parts)
        if names.legacy_commit_log in existing:  # replaced by `_commits` on this shard's next save
            commit_log.legacy_file = names.legacy_commit_log
        if storage.exists(storage.join(out, names.success), storage_options):
            shard = {unit.number for unit in plan.shard_units(names.shard.index, names.shard.count)}
            if shard <= commit_log.committed_units():
                return Prepared(commit_log, complete=True)
            log.warning(
                "%s exists but %s lacks %d of the shard's units; resuming", names.success, own,
                len(shard - commit_log.committed_units()),
            )  # fmt: skip
            storage.remove(storage.join(out, names.success), storage_options)
    if overwrite:  # the global _SUCCESS first: this shard's units are about to be redone
        for name in (GLOBAL_SUCCESS, names.success, names.summary, *own_names):
            storage.remove(storage.join(out, name), storage_options)
    _forget_missing(out, commit_log, storage_options)
    commit_log.save(out, names, storage_options, merge=False)  # read just now, under this shard's lease
    return Prepared(commit_log, complete=False)


def remove_run(out: str, storage_options: dict[str, Any] | None = None) -> None:
    """--overwrite of an unsharded run: every skutag file in OUT (plan, parts, control files).

    `_PLAN` goes first, then `_SUCCESS` and the commit logs: a removal cut short leaves an OUT
    with no plan (the next run plans again), never a plan whose files are half gone, nor a
    `_SUCCESS` over missing parts.
    """
    plan_dir = storage.join(out, PLAN_DIR)
    storage.remove(storage.join(plan_dir, PLAN_FILE), storage_options)
    for name in storage.list_names(plan_dir, storage_options):
        storage.remove(storage.join(plan_dir, name), storage_options)
    names = storage.list_names(out, storage_options)
    for prefix in (
        "_SUCCESS",
        COMMIT_LOG,
        LEGACY_COMMIT_LOG,
        "_summary",
    ):  # leases stay: they belong to live processes
        for name in names:
            if name.startswith(prefix):
                storage.remove(storage.join(out, name), storage_options)
    for name in names:
        if PART.fullmatch(name) or name.startswith(".part-"):
            storage.remove(storage.join(out, name), storage_options)


def _forget_missing(out: str, commit_log: CommitLog, storage_options: dict[str, Any] | None) -> None:
    present = set(storage.list_names(out, storage_options))
    kept = [part for part in commit_log.parts if part.file in present]
    if len(kept) != len(commit_log.parts):
        log.warning(
            "%d committed part(s) are missing from %s; redoing them", len(commit_log.parts) - len(kept), out
        )
    commit_log.parts = kept


def is_commit_log(name: str) -> bool:
    """A commit log's file name: `_commits[.TAG].json`, or 0.3's `_manifest[.TAG].json`."""
    return name.endswith(".json") and (name.startswith(COMMIT_LOG) or name.startswith(LEGACY_COMMIT_LOG))


def read_commit_logs(out: str, storage_options: dict[str, Any] | None = None) -> list[tuple[str, CommitLog]]:
    """(file name, log) of every shard's commit log in OUT, each read once: 0.3's `_manifest*` before
    `_commits*`, so that where both list a unit, this version's entry is read last and wins."""
    names = [name for name in storage.list_names(out, storage_options) if is_commit_log(name)]
    names.sort(key=lambda name: (not name.startswith(LEGACY_COMMIT_LOG), name))
    return [(name, CommitLog.read(storage.join(out, name), storage_options)) for name in names]


def read_json(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        return json.loads(storage.read_bytes(uri, storage_options))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {uri}: {exc}") from exc


def read_summary(
    out: str, names: OutputNames, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    return read_json(storage.join(out, names.summary), storage_options)
