"""Labelled images: find them (ImageFolder tree or CSV/Parquet manifest), split them, decode them.

`find_splits` turns DATA into train and validation `Sample` lists with a sorted class
list; `find_labelled` gives the evaluation set of `skutag eval`. Folders are listed by
`skutag.listing.walk_images`, as every stage lists them: hidden and AppleDouble files
skipped and counted, symlinked folders entered once, non-UTF-8 names kept (a sample's
`path` is the listing's uri: valid UTF-8, so it can be written to CSV and JSON).
`CatalogDataset` reads through `skutag.images.read_file` (sized before reading) and
decodes through `load_image` (the one preprocessing path), and returns a status per
sample, so a file that fails to load is reported and skipped by the loop instead of
breaking the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from skutag.card import ModelCard
from skutag.errors import InputError
from skutag.images import ImageError, load_image, read_file
from skutag.listing import ListingCounts, local_path, walk_images

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".parquet")
VAL_NAMES = ("val", "valid", "validation")


@dataclass(frozen=True, order=True)
class Sample:
    path: str  # a path, or the listing's uri (a file:// URL for a non-UTF-8 name): `local_path` opens it
    label: str


@dataclass(frozen=True)
class Splits:
    train: list[Sample]
    val: list[Sample]
    classes: list[str]  # sorted; index = model output column
    hidden: int = field(default=0, compare=False)  # hidden/AppleDouble entries the listing skipped


def find_splits(
    data: str | Path,
    *,
    val_dir: str | Path | None,
    val_split: float | None,
    seed: int,
    split_by: str | None = None,
    label_column: str = "label",
) -> Splits:
    """Train and validation samples from an ImageFolder tree (with or without train/ val/) or a manifest.

    With `split_by` (`--split-by`, trainer.groups) a `val_split` keeps every product on one side.
    `label_column`: the manifest column the label head learns (another than `label` only for a manifest
    without one, trainer.attributes.label_column: its rows without a value are left out)."""
    data = Path(data)
    if val_dir is not None and val_split is not None:
        raise InputError("pass either --val DIR or --val-split F, not both")
    if split_by is not None and val_split is None:
        raise InputError("--split-by splits DATA by product for --val-split F; pass --val-split too")
    counts = ListingCounts()
    splits = _find_splits(data, val_dir, val_split, seed, counts, split_by, label_column)
    report_listing(data, counts)
    return replace(splits, hidden=counts.hidden)


def _find_splits(
    data: Path,
    val_dir: str | Path | None,
    val_split: float | None,
    seed: int,
    counts: ListingCounts,
    split_by: str | None = None,
    label_column: str = "label",
) -> Splits:
    if data.is_file():
        samples, splits = read_manifest(data, label_column)
        if splits is not None and val_dir is None and val_split is None:
            train = [s for s, split in zip(samples, splits, strict=True) if split == "train"]
            val = [s for s, split in zip(samples, splits, strict=True) if split in VAL_NAMES]
            return _checked(train, val, f"{data} (split column)")
        train = samples
    else:
        val_folder = next((data / name for name in VAL_NAMES if (data / name).is_dir()), None)
        if (data / "train").is_dir() and val_folder is not None and val_dir is None and val_split is None:
            return _checked(scan_folder(data / "train", counts), scan_folder(val_folder, counts), str(data))
        train = scan_folder(data / "train" if (data / "train").is_dir() else data, counts)
    if val_dir is not None:
        return _checked(train, scan_folder(Path(val_dir), counts), str(data))
    if val_split is None:
        raise InputError(
            f"{data} has no validation set: give it train/ and val/ folders (or a split column), "
            "or pass --val-split F or --val DIR"
        )
    if split_by is not None:
        train, val = product_split(data, train, split_by, val_split, seed)
    else:
        train, val = stratified_split(train, val_split, seed)
    return _checked(train, val, str(data))


def find_labelled(data: str | Path, label_column: str = "label") -> list[Sample]:
    """The samples `skutag eval` scores: the val/ part when DATA has one, else all of it (`label_column`: the
    card's provenance `label_column` for a model whose label head learned an attribute column)."""
    data = Path(data)
    if data.is_file():
        samples, splits = read_manifest(data, label_column)
        if splits is not None and any(s in VAL_NAMES for s in splits):
            samples = [s for s, split in zip(samples, splits, strict=True) if split in VAL_NAMES]
    else:
        val_folder = next((data / name for name in VAL_NAMES if (data / name).is_dir()), None)
        counts = ListingCounts()
        samples = scan_folder(val_folder or data, counts)
        report_listing(data, counts)
    if not samples:
        raise InputError(f"no labelled images in {data}")
    return samples


def scan_folder(root: Path, counts: ListingCounts | None = None) -> list[Sample]:
    """ImageFolder: every image file under `root/<class>/` (any depth), label = the class folder's name.

    Listed by `walk_images` (one walk of `root`, so a symlink back to `root` or a parent is not
    re-entered); files directly in `root` belong to no class and are left out. What the listing
    skipped (hidden files, revisited folders) is added to `counts`.
    """
    if not root.is_dir():
        raise InputError(f"not a directory: {root}")
    samples = []
    for entry in walk_images(root, counts):
        label, sep, _ = entry.id.partition("/")
        if sep:
            samples.append(Sample(entry.uri, label))
    if not samples:
        raise InputError(f"no images in class folders under {root} (expected {root}/<class>/<image>)")
    return samples


def report_listing(data: Path, counts: ListingCounts) -> None:
    """Say what the listing of DATA skipped: hidden/AppleDouble files, folders reached again by a symlink."""
    notes = []
    if counts.hidden:
        notes.append(f"{counts.hidden} hidden file(s) or folder(s) (dotfiles, AppleDouble ._*) skipped")
    if counts.revisited_dirs:
        notes.append(f"{counts.revisited_dirs} folder(s) reached again through a symlink not re-entered")
    if notes:
        log.warning("%s: %s", data, "; ".join(notes))


def read_manifest(path: Path, label_column: str = "label") -> tuple[list[Sample], list[str] | None]:
    """Rows `path,label[,split]` of a CSV or Parquet file; relative paths are relative to the manifest. With
    another `label_column` (an attribute column standing in for `label`) rows without a value are left out."""
    if path.suffix.lower() not in MANIFEST_SUFFIXES:
        raise InputError(f"{path}: a manifest must be .csv or .parquet (or pass a folder)")
    from skutag.manifests import read_batches

    rows = [row for batch in read_batches(str(path)) for row in batch.to_pylist()]
    if not rows or not {"path", label_column} <= set(rows[0]):
        raise InputError(f"{path}: a manifest needs the columns path,label[,split]")
    base = path.parent
    samples, splits = [], []
    for number, row in enumerate(rows, start=2):
        if label_column != "label" and row.get("path") and not str(row.get(label_column) or "").strip():
            continue  # a photo without the attribute standing in for the label: nothing to learn
        if not row.get("path") or not row.get(label_column):
            raise InputError(f"{path}: row {number} has an empty path or label")
        samples.append(Sample(str(base / str(row["path"])), str(row[label_column]).strip()))
        splits.append(str(row.get("split") or "").strip().lower())
    return samples, (splits if "split" in rows[0] else None)


def stratified_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Seeded, stratified train/val split (scikit-learn)."""
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise InputError(f"--val-split must be between 0 and 1, got {fraction}")
    try:
        train, val = train_test_split(
            samples, test_size=fraction, random_state=seed, stratify=[s.label for s in samples]
        )
    except ValueError as exc:
        raise InputError(f"cannot split {len(samples)} images with --val-split {fraction}: {exc}") from exc
    return sorted(train, key=lambda s: s.path), sorted(val, key=lambda s: s.path)


def product_split(
    data: Path, samples: list[Sample], split_by: str, fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """`--val-split` with `--split-by`: a seeded split, stratified by label as far as the products allow,
    that never puts photos of one product on both sides (trainer.groups)."""
    from skutag.trainer.groups import SplitBy, grouped_split, read_groups

    rule = SplitBy.parse(split_by)
    if rule.column is not None:
        if not data.is_file():
            raise InputError(
                f"--split-by {rule.column}: a column needs a manifest DATA; use prefix:SEP for a folder"
            )
        products = read_groups(data, rule)
        groups = [products[s.path] for s in samples]
    else:
        groups = [rule.group(s.path) for s in samples]
    train, val = grouped_split([s.label for s in samples], groups, fraction, seed)
    return sorted(samples[i] for i in train), sorted(samples[i] for i in val)


def decision_samples(outs: list[str] | tuple[str, ...]) -> dict[str, Sample | None]:
    """path -> the photo as people labelled it in `skutag review` (accepted or corrected), or None for a photo
    marked not a product; the latest decision per id of each OUT, later OUTs winning for the same photo."""
    from skutag.decisions import read_decisions

    by_path: dict[str, Sample | None] = {}
    for out in outs:
        decided = read_decisions(out).select(["uri", "decided_label"]).to_pylist()
        if not decided:
            raise InputError(f"--decisions {out}: no review decisions under {out}/_review/")
        for row in decided:
            if row["uri"].startswith(("s3://", "gs://", "gcs://", "http://", "https://")):
                raise InputError(
                    f"--decisions {out}: {row['uri']} is not a local file (training reads local photos)"
                )
            label = row["decided_label"]
            by_path[row["uri"]] = None if label is None else Sample(row["uri"], label)
    return by_path


def with_decisions(splits: Splits, decided: dict[str, Sample | None]) -> Splits:
    """`splits` with the decided photos in the training set under the decided label, and the photos marked
    not a product left out: the same photo in DATA (train or val) is replaced or dropped, so a person's
    decision is never contradicted or validated against."""
    train = sorted([s for s in splits.train if s.path not in decided] + [s for s in decided.values() if s])
    val = [s for s in splits.val if s.path not in decided]
    return replace(_checked(train, val, "DATA with --decisions"), hidden=splits.hidden)


def _checked(train: list[Sample], val: list[Sample], where: str) -> Splits:
    classes = sorted({s.label for s in train})
    if len(classes) < 2:
        raise InputError(f"{where}: training needs at least two classes, found {classes}")
    if not val:
        raise InputError(f"{where}: the validation set is empty")
    unknown = sorted({s.label for s in val} - set(classes))
    if unknown:
        raise InputError(f"{where}: validation labels not in the training set: {unknown[:5]}")
    return Splits(train, val, classes)


class CatalogDataset(Dataset):
    """Decoded samples as dicts: `image` (uint8 CHW, or float for strong augmentation), `label`, `index`, `ok`.

    Without `transform`: the exact batchrun preprocessing (resize + centre crop by `load_image`).
    With one (training): shorter side to the card's resize_size, then `transform` (random crop, ...).
    A file that fails to load gives `ok=False`, a blank image and its error, never an exception.
    """

    def __init__(
        self,
        samples: list[Sample],
        class_index: dict[str, int],
        card: ModelCard,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.samples = samples
        self.labels = [class_index[s.label] for s in samples]
        self.card = card
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        size = self.card.image_size
        try:
            decoded = load_image(
                read_file(local_path(self.samples[index].path)),
                resize_size=self.card.resize_size,
                image_size=None if self.transform is not None else size,
                interpolation=self.card.interpolation,
            )
            pixels = decoded.pixels if decoded.pixels.flags.writeable else decoded.pixels.copy()
            image = torch.from_numpy(pixels).permute(2, 0, 1)
            ok, error = True, ""
        except ImageError as exc:
            image, ok, error = torch.zeros(3, size, size, dtype=torch.uint8), False, f"{exc.kind}: {exc}"
        if self.transform is not None:
            image = self.transform(image)  # failed samples too: same dtype and size as the good ones
        return {"image": image, "label": self.labels[index], "index": index, "ok": ok, "error": error}
