"""`--split-by`: keep every photo of one product on one side of every split.

Several photos often show one product (front, back, another colour); a split by photo puts
some of them in validation and their twins in training, and the figures flatter the model.
`--split-by COLUMN` takes the product from a manifest column; `--split-by prefix:SEP` from the
file name, the part before the first SEP (`prefix:-`: `wb01-black_main.jpg` -> `wb01`).
`grouped_split` (one train/validation split) and `grouped_folds` (k folds) are stratified by
label as far as the groups allow (scikit-learn's StratifiedGroupKFold).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from skutag.errors import InputError

RULE_PREFIX = "prefix:"


@dataclass(frozen=True)
class SplitBy:
    """A parsed `--split-by`: a manifest column, or the file-name prefix before `separator`."""

    column: str | None = None
    separator: str | None = None

    @classmethod
    def parse(cls, text: str) -> SplitBy:
        text = text.strip()
        if text.startswith(RULE_PREFIX):
            separator = text[len(RULE_PREFIX) :]
            if not separator:
                raise InputError("--split-by prefix:SEP needs a separator, e.g. prefix:-")
            return cls(separator=separator)
        if not text:
            raise InputError("--split-by needs a column name or prefix:SEP")
        return cls(column=text)

    def group(self, path: str, row: Mapping[str, object] | None = None) -> str:
        """The product of one photo (its manifest row, when the rule is a column)."""
        if self.separator is not None:
            name = PurePosixPath(path.replace("\\", "/")).name
            head, found, _ = name.partition(self.separator)
            return head if found else Path(name).stem
        value = (row or {}).get(self.column)  # type: ignore[arg-type]
        if value is None or str(value).strip() == "":
            raise InputError(f"--split-by {self.column}: {path} has no value in that column")
        return str(value).strip()


def read_groups(manifest: str | Path, split_by: SplitBy) -> dict[str, str]:
    """sample path (the manifest's folder / `path`) -> product, for every row of `manifest`."""
    from skutag.manifests import read_batches

    manifest = Path(manifest)
    rows = [row for batch in read_batches(str(manifest)) for row in batch.to_pylist()]
    if split_by.column is not None and rows and split_by.column not in rows[0]:
        raise InputError(
            f"--split-by {split_by.column}: {manifest} has no such column (has {', '.join(rows[0])})"
        )
    return {str(manifest.parent / str(r["path"])): split_by.group(str(r["path"]), r) for r in rows}


def grouped_folds(
    labels: Sequence[str], groups: Sequence[str], folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train indices, validation indices) pairs; every group on exactly one validation side."""
    from sklearn.model_selection import StratifiedGroupKFold

    distinct = len(set(groups))
    if folds < 2 or distinct < folds:
        raise InputError(f"--split-by: {distinct} products cannot make {folds} folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(np.sort(a), np.sort(b)) for a, b in splitter.split(np.zeros(len(labels)), labels, groups)]


def grouped_split(
    labels: Sequence[str], groups: Sequence[str], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """One (train, validation) split of about `fraction` validation photos, by product."""
    if not 0 < fraction < 1:
        raise InputError(f"--val-split must be between 0 and 1, got {fraction}")
    folds = max(2, round(1 / fraction))
    return grouped_folds(labels, groups, folds, seed)[0]
