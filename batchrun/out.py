"""OUT's control files and what they make of a rerun: resume, refuse, or say it is done.

OUT (a local folder or an `s3://` / `gs://` prefix) holds `_plan/`, one `part-NNNNN.parquet`
per unit of the plan (the same name on every attempt and in every engine, so a redone unit
replaces its file instead of adding one), and per shard `_manifest[.TAG].json` (the
committed parts and the run key), `_summary[.TAG].json` and `_SUCCESS[.TAG]`, written last.
Everything but the parts starts with `_`, so OUT reads as one table.

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

from skutag import storage
from skutag.errors import InputError

from .plan import PLAN_DIR, PLAN_FILE, Plan
from .reuse import resume_problem
from .shard import Shard

log = logging.getLogger(__name__)

FORMAT = 2
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
    def manifest(self) -> str:
        return self._tagged("_manifest", ".json")

    @property
    def summary(self) -> str:
        return self._tagged("_summary", ".json")

    @property
    def success(self) -> str:
        return self._tagged("_SUCCESS")


@dataclass
class Manifest:
    key: dict[str, Any]
    parts: list[dict[str, Any]] = field(default_factory=list)

    def committed_units(self) -> set[int]:
        return {part["unit"] for part in self.parts}

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "key": self.key, "parts": self.parts}

    def save(self, out: str, names: OutputNames, storage_options: dict[str, Any] | None = None) -> None:
        data = json.dumps(self.to_json(), indent=1).encode()
        storage.write_bytes(storage.join(out, names.manifest), data, storage_options)


@dataclass
class Prepared:
    manifest: Manifest
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
    existing = dict(read_manifests(out, storage_options))
    for name, other_key in existing.items():
        problem = resume_problem(other_key, key, same_shard=name == names.manifest)
        if problem and not overwrite:
            raise InputError(
                f"{out} holds a different run ({problem}, see {name}); "
                "use another --out or pass --overwrite to replace it"
            )
        if problem and name != names.manifest:
            log.warning("%s in %s belongs to a different run; its files are left alone", name, out)
    manifest = Manifest(key)
    if names.manifest in existing and not overwrite:
        manifest.parts = _read_json(storage.join(out, names.manifest), storage_options)["parts"]
        if storage.exists(storage.join(out, names.success), storage_options):
            return Prepared(manifest, complete=True)
    if overwrite:
        for name in (names.success, names.summary):
            storage.remove(storage.join(out, name), storage_options)
    _forget_missing(out, manifest, storage_options)
    manifest.save(out, names, storage_options)
    return Prepared(manifest, complete=False)


def remove_run(out: str, storage_options: dict[str, Any] | None = None) -> None:
    """--overwrite of an unsharded run: every skutag file in OUT (plan, parts, control files)."""
    for name in storage.list_names(out, storage_options):
        if PART.fullmatch(name) or name.startswith(("_manifest", "_summary", "_SUCCESS", ".part-")):
            storage.remove(storage.join(out, name), storage_options)
    plan_dir = storage.join(out, PLAN_DIR)
    names = storage.list_names(plan_dir, storage_options)
    for name in sorted(names, key=lambda n: n == PLAN_FILE):  # _PLAN last
        storage.remove(storage.join(plan_dir, name), storage_options)


def _forget_missing(out: str, manifest: Manifest, storage_options: dict[str, Any] | None) -> None:
    present = set(storage.list_names(out, storage_options))
    kept = [part for part in manifest.parts if part["file"] in present]
    if len(kept) != len(manifest.parts):
        log.warning(
            "%d committed part(s) are missing from %s; redoing them", len(manifest.parts) - len(kept), out
        )
    manifest.parts = kept


def read_manifests(
    out: str, storage_options: dict[str, Any] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(file name, run key) of every run manifest in OUT."""
    found = []
    for name in storage.list_names(out, storage_options):
        if not (name.startswith("_manifest") and name.endswith(".json")):
            continue
        data = _read_json(storage.join(out, name), storage_options)
        if data.get("format") != FORMAT or "key" not in data:
            raise InputError(
                f"{storage.join(out, name)} is not a skutag run manifest (format {data.get('format')!r})"
            )
        found.append((name, data["key"]))
    return found


def read_parts(out: str, storage_options: dict[str, Any] | None = None) -> dict[int, dict[str, Any]]:
    """Every committed part of every shard in OUT, by unit number."""
    parts: dict[int, dict[str, Any]] = {}
    for name, _key in read_manifests(out, storage_options):
        for part in _read_json(storage.join(out, name), storage_options)["parts"]:
            parts[part["unit"]] = part
    return parts


def _read_json(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        return json.loads(storage.read_bytes(uri, storage_options))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {uri}: {exc}") from exc


def read_summary(
    out: str, names: OutputNames, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    return _read_json(storage.join(out, names.summary), storage_options)
