"""OUT's control files and what they make of a rerun: resume, refuse, or say it is done.

`_manifest.json` lists each committed part with the input index ranges it covers and its
counts, under a run key (model sha256, input list fingerprint, shard, top-k, embeddings,
preprocessing). A rerun with the same key skips the committed ranges; a different key is
refused unless `--overwrite`. A sharded run names every file it owns with its shard tag
(`part-s0001-of-0004-00000.parquet`, `_manifest.s0001-of-0004.json`, ...), so N shards
can share one OUT and `OUT/*.parquet` reads as the whole catalog; every manifest in an
OUT must agree on the key apart from the shard index.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skutag.errors import InputError
from skutag.fsio import atomic_write_json

from .ranges import Range, Shard, merge

log = logging.getLogger(__name__)

FORMAT = 1
# Keys whose difference makes an existing OUT unusable for this run (checked in this order).
KEY_FIELDS = (
    "model_sha256",
    "inputs_fingerprint",
    "inputs_total",
    "shard_count",
    "topk",
    "embeddings",
    "model",
)


@dataclass(frozen=True)
class OutputNames:
    """File names a run (or one shard of it) owns inside OUT."""

    shard: Shard

    def _tagged(self, stem: str, suffix: str) -> str:
        return f"{stem}.{self.shard.tag}{suffix}" if self.shard.sharded else f"{stem}{suffix}"

    @property
    def manifest(self) -> str:
        return self._tagged("_manifest", ".json")

    @property
    def summary(self) -> str:
        return self._tagged("summary", ".json")

    @property
    def success(self) -> str:
        return self._tagged("_SUCCESS", "")

    @property
    def part_prefix(self) -> str:
        return f"part-{self.shard.tag}-" if self.shard.sharded else "part-"

    def part(self, number: int) -> str:
        return f"{self.part_prefix}{number:05d}.parquet"

    def is_part(self, name: str) -> bool:
        return re.fullmatch(re.escape(self.part_prefix) + r"\d{5,}\.parquet", name) is not None

    def owned(self, out: Path) -> list[Path]:
        """Every file of this shard in OUT: parts, temporaries, control files."""
        control = {self.manifest, self.summary, self.success}
        return [
            p
            for p in out.iterdir()
            if p.name in control or self.is_part(p.name) or self._is_temporary(p.name)
        ]

    def _is_temporary(self, name: str) -> bool:
        # skutag.fsio writes `.{final name}.XXXX.tmp` beside the final name.
        if not (name.startswith(".") and name.endswith(".tmp")):
            return False
        final = name[1:].rsplit(".", 2)[0]
        return self.is_part(final) or final in (self.manifest, self.summary, self.success)


@dataclass
class Manifest:
    key: dict[str, Any]
    parts: list[dict[str, Any]] = field(default_factory=list)

    def committed(self) -> list[Range]:
        return merge(tuple(r) for part in self.parts for r in part["ranges"])

    def next_part_number(self) -> int:
        return 1 + max((part["number"] for part in self.parts), default=-1)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "key": self.key, "parts": self.parts}

    def save(self, out: Path, names: OutputNames) -> None:
        atomic_write_json(out / names.manifest, self.to_json())


@dataclass
class Prepared:
    manifest: Manifest
    complete: bool  # _SUCCESS exists for this very run: nothing to do


def prepare_out(out: Path, names: OutputNames, key: dict[str, Any], *, overwrite: bool) -> Prepared:
    """Make OUT ready for this run: fresh, resumed, or complete; refuse an incompatible OUT."""
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        _remove_runs(out, names, key)
    for other_path, other_key in _manifests(out):
        problem = _incompatibility(other_key, key, same_shard=other_path.name == names.manifest)
        if problem:
            raise InputError(
                f"{out} holds a different run ({problem}, see {other_path.name}); "
                "use another --out or pass --overwrite to replace it"
            )
    manifest_path = out / names.manifest
    manifest = Manifest(key)
    if manifest_path.exists():
        manifest.parts = _read_json(manifest_path)["parts"]
        if (out / names.success).exists():
            return Prepared(manifest, complete=True)
    _drop_uncommitted(out, names, manifest)
    manifest.save(out, names)
    return Prepared(manifest, complete=False)


def _drop_uncommitted(out: Path, names: OutputNames, manifest: Manifest) -> None:
    """Delete temporaries and parts the manifest does not list; forget listed parts that vanished."""
    listed = {part["file"] for part in manifest.parts}
    for path in names.owned(out):
        if path.name == names.manifest:
            continue
        if path.name not in listed:
            log.info("removing uncommitted %s", path.name)
            path.unlink()
    kept = [part for part in manifest.parts if (out / part["file"]).exists()]
    if len(kept) != len(manifest.parts):
        log.warning(
            "%d committed part(s) are missing from %s; redoing their inputs",
            len(manifest.parts) - len(kept),
            out,
        )
    manifest.parts = kept


def _remove_runs(out: Path, names: OutputNames, key: dict[str, Any]) -> None:
    """--overwrite: this shard's files, and every run in OUT this one is incompatible with."""
    doomed = set(names.owned(out))
    for _path, other_key in _manifests(out):
        if _incompatibility(other_key, key, same_shard=False):
            other = Shard(other_key["shard_index"], other_key["shard_count"])
            doomed.update(OutputNames(other).owned(out))
    for path in sorted(doomed):
        path.unlink(missing_ok=True)


def _manifests(out: Path) -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(out.glob("_manifest*.json")):
        data = _read_json(path)
        if data.get("format") != FORMAT or "key" not in data:
            raise InputError(f"{path} is not a skutag run manifest (format {data.get('format')!r})")
        found.append((path, data["key"]))
    return found


def _incompatibility(existing: dict[str, Any], wanted: dict[str, Any], *, same_shard: bool) -> str | None:
    fields = KEY_FIELDS + (("shard_index",) if same_shard else ())
    for name in fields:
        if existing.get(name) != wanted.get(name):
            return f"{name.replace('_', ' ')} {_short(existing.get(name))} != {_short(wanted.get(name))}"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text[:12] if isinstance(value, str) and len(text) > 40 else text


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc


def read_summary(out: Path, names: OutputNames) -> dict[str, Any]:
    return _read_json(out / names.summary)
