"""Catalog attributes for training: `--attributes` parsed, read from the manifest, encoded with masks.

A manifest (CSV or Parquet, the shape of `attributes.csv`: `path,label,color,pattern,...`)
gives each photo zero or more values per attribute: several joined by `|`, an empty cell
when the catalog has none. `--attributes color,pattern,style:multi` names the columns to
train; a name without a kind is multi-valued when any of its cells holds a `|`, else
single-valued. `encode` turns the rows of a split into the targets of each head and a mask
of the rows that have a value, so a missing value is left out of that head's loss (and of
its metrics), never read as a value of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skutag.errors import InputError
from skutag.heads import KINDS, MULTI, NAME, RESERVED, SINGLE

log = logging.getLogger(__name__)

SEPARATOR = "|"
Values = tuple[str, ...]  # one photo's values of one attribute; () is missing


@dataclass(frozen=True)
class AttributeSpec:
    """One `--attributes` item: a manifest column, and its kind when the user said it (None: decide)."""

    name: str
    kind: str | None = None


@dataclass(frozen=True)
class HeadData:
    """A head's vocabulary and kind, decided from the training rows."""

    name: str
    kind: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Encoded:
    """One head's targets for a list of photos. single: `targets` int64 [N] (-1 where missing);
    multi: float32 [N, values] (0/1). `mask` bool [N]: the photo has a value for this head."""

    targets: np.ndarray
    mask: np.ndarray


def parse_attributes(text: str) -> list[AttributeSpec]:
    """`color,pattern,style:multi` -> specs; InputError (one line) for a malformed list."""
    specs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise InputError(f"--attributes {text!r}: an empty name (names separated by commas)")
        name, _, kind = item.partition(":")
        name, kind = name.strip(), kind.strip() or None
        if not NAME.match(name):
            raise InputError(
                f"--attributes: {name!r} must be lowercase letters, digits and _ (a letter first)"
            )
        if name in RESERVED or f"{name}_score" in RESERVED:
            raise InputError(f"--attributes: {name!r} would take a column skutag already writes; rename it")
        if kind is not None and kind not in KINDS:
            raise InputError(f"--attributes {item}: the kind is single or multi, not {kind!r}")
        specs.append(AttributeSpec(name, kind))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InputError(f"--attributes {text!r} names an attribute twice")
    return specs


def split_cell(cell: object) -> Values:
    """A manifest cell as values: None / empty -> (); `a|b` -> ("a", "b"), stripped, empty parts dropped."""
    if cell is None:
        return ()
    if isinstance(cell, float) and np.isnan(cell):
        return ()
    return tuple(dict.fromkeys(p.strip() for p in str(cell).split(SEPARATOR) if p.strip()))


def read_attributes(manifest: str | Path, specs: Sequence[AttributeSpec]) -> dict[str, dict[str, Values]]:
    """sample path (as trainer.data.read_manifest makes it: the manifest's folder / `path`) ->
    {attribute: values}, for every row of the manifest."""
    from skutag.manifests import read_batches

    manifest = Path(manifest)
    rows = [row for batch in read_batches(str(manifest)) for row in batch.to_pylist()]
    if not rows or "path" not in rows[0]:
        raise InputError(f"{manifest}: an attributes manifest needs a `path` column")
    missing = [s.name for s in specs if s.name not in rows[0]]
    if missing:
        raise InputError(
            f"--attributes: {manifest} has no column {', '.join(missing)} (it has {', '.join(rows[0])})"
        )
    table: dict[str, dict[str, Values]] = {}
    for number, row in enumerate(rows, start=2):
        if not row.get("path"):
            raise InputError(f"{manifest}: row {number} has an empty path")
        table[str(manifest.parent / str(row["path"]))] = {s.name: split_cell(row[s.name]) for s in specs}
    return table


def decide_heads(
    specs: Sequence[AttributeSpec], train: Sequence[str], table: Mapping[str, Mapping[str, Values]]
) -> list[HeadData]:
    """Kind and sorted vocabulary of each head from the training photos' values.

    A head declared single whose cells hold several values is refused; a single head needs two
    values seen in training, a multi head one."""
    heads = []
    for spec in specs:
        cells = [table[path][spec.name] for path in train if path in table]
        several = any(len(values) > 1 for values in cells)
        kind = spec.kind or (MULTI if several else SINGLE)
        if kind == SINGLE and several:
            example = next(SEPARATOR.join(v) for v in cells if len(v) > 1)
            raise InputError(
                f"--attributes {spec.name}:single, but a photo has several values ({example!r}); "
                f"say {spec.name}:multi"
            )
        values = tuple(sorted({v for vs in cells for v in vs}))
        least = 2 if kind == SINGLE else 1
        if len(values) < least:
            raise InputError(
                f"--attributes {spec.name}: the training photos give {len(values)} value(s); "
                f"a {kind}-valued attribute needs at least {least}"
            )
        heads.append(HeadData(spec.name, kind, values))
    return heads


def encode(head: HeadData, photos: Sequence[str], table: Mapping[str, Mapping[str, Values]]) -> Encoded:
    """The head's targets and mask for `photos`. Values the training photos never gave are not learnable:
    dropped (a single-valued photo left with none counts as missing), and counted in the log."""
    index = {value: i for i, value in enumerate(head.values)}
    unseen = 0
    mask = np.zeros(len(photos), bool)
    if head.kind == SINGLE:
        targets = np.full(len(photos), -1, np.int64)
    else:
        targets = np.zeros((len(photos), len(head.values)), np.float32)
    for row, path in enumerate(photos):
        values = table.get(path, {}).get(head.name, ())
        known = [index[v] for v in values if v in index]
        unseen += len(values) - len(known)
        if not known:
            continue
        mask[row] = True
        if head.kind == SINGLE:
            targets[row] = known[0]
        else:
            targets[row, known] = 1.0
    if unseen:
        log.info("attribute %s: %d value(s) not seen in training were left out", head.name, unseen)
    return Encoded(targets, mask)


def with_decided(
    table: Mapping[str, Mapping[str, Values]], outs: Sequence[str], specs: Sequence[AttributeSpec]
) -> dict[str, dict[str, Values]]:
    """The manifest's values with people's review decisions over them (`skutag review` on a `skutag run` OUT,
    `--decisions`): a head a decision names takes the decided values for that photo (keyed by its uri, as
    trainer.data.decision_samples adds it; an unknown single value is missing), the other heads keep the
    manifest's; later OUTs win, as for labels."""
    from skutag.decisions import attribute_values, read_decisions

    names = {spec.name for spec in specs}
    merged = {path: dict(values) for path, values in table.items()}
    for out in outs:
        for row in read_decisions(out).select(["uri", "decided_attributes"]).to_pylist():
            decided = {k: v for k, v in attribute_values(row["decided_attributes"]).items() if k in names}
            if decided:
                merged.setdefault(row["uri"], {}).update(decided)
    return merged


def label_column(manifest: str | Path, specs: Sequence[AttributeSpec]) -> str | None:
    """For a manifest without a `label` column: the attribute column whose head stands in as the label head
    (docs/design.md, "Attribute heads"), the first of `specs` that is single-valued (said `:single`, or no
    cell holds `|`). None when the manifest has `label`. InputError when none of `specs` is single-valued."""
    from skutag.manifests import read_batches

    rows = [row for batch in read_batches(str(manifest)) for row in batch.to_pylist()]
    if rows and "label" in rows[0]:
        return None
    for spec in specs:
        if rows and spec.name not in rows[0]:
            continue  # read_attributes says so in one line
        several = any(SEPARATOR in str(row.get(spec.name) or "") for row in rows)
        if spec.kind == SINGLE or (spec.kind is None and not several):
            return spec.name
    raise InputError(
        f"{manifest} has no label column: one of --attributes must be single-valued to stand in as the label "
        f"head (none of {', '.join(s.name for s in specs)} is)"
    )
