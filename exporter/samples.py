"""Images for calibration and the parity check, as the exported model will be fed them.

Real images go through `skutag.images.load_image` with the card's resize, crop and
interpolation, exactly as batchrun decodes them, into uint8 `[N, H, W, 3]` batches.
Selection is deterministic: the image files under a directory in sorted order, and,
when there are more than asked for, an evenly spaced subset (so an ImageFolder tree
sorted by class still gives every class). Synthetic images (when no directory is
given for the parity check) are rendered by `skutag.synth` and decoded the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skutag.card import ModelCard
from skutag.errors import InputError
from skutag.images import ImageError, is_image_path, load_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleSet:
    """Decoded images plus where they came from (for the report)."""

    pixels: np.ndarray  # uint8 [N, H, W, 3]
    source: str  # a directory, or "synthetic"
    skipped: int  # files that could not be decoded

    def __len__(self) -> int:
        return len(self.pixels)

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "count": len(self), "skipped_undecodable": self.skipped}


def select_files(directory: str | Path, count: int) -> list[Path]:
    """Up to `count` image files under `directory` (recursive), deterministic and spread evenly."""
    root = Path(directory)
    if not root.is_dir():
        raise InputError(f"image directory not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_path(p))
    if not files:
        raise InputError(f"no image files under {root}")
    if len(files) <= count:
        return files
    picks = np.linspace(0, len(files) - 1, num=count).round().astype(int)
    return [files[i] for i in picks]


def load_directory(directory: str | Path, card: ModelCard, count: int) -> SampleSet:
    """Decode up to `count` images from `directory` for `card`; undecodable files are skipped and counted."""
    images, skipped = [], 0
    for path in select_files(directory, count):
        try:
            images.append(decode(path, card))
        except ImageError as exc:
            skipped += 1
            log.warning("skipping %s: %s", path, exc.message)
    if not images:
        raise InputError(f"none of the image files under {directory} could be decoded")
    return SampleSet(np.stack(images), str(directory), skipped)


def synthetic(card: ModelCard, count: int, seed: int = 0) -> SampleSet:
    """`count` synthetic product photos (skutag.synth), decoded through skutag.images."""
    from skutag.synth import SynthSpec, render_file

    spec = SynthSpec(
        count=count,
        classes=card.num_classes,
        min_size=card.resize_size,
        max_size=max(card.resize_size, 2 * card.image_size),
        seed=seed,
    )
    images = [decode(render_file(spec, i)[1], card) for i in range(count)]
    return SampleSet(np.stack(images), "synthetic", 0)


def decode(source: Path | bytes, card: ModelCard) -> np.ndarray:
    """One image as the model sees it: uint8 [H, W, 3] after the card's resize and crop."""
    return load_image(
        source, resize_size=card.resize_size, image_size=card.image_size, interpolation=card.interpolation
    ).pixels


def batches(pixels: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(pixels), batch_size):
        yield pixels[start : start + batch_size]


def model_input(pixels: np.ndarray, card: ModelCard, input_kind: str) -> np.ndarray:
    """What the exported model takes: the uint8 NHWC pixels as they are, or float32 NCHW normalised."""
    if input_kind == "uint8":
        return np.ascontiguousarray(pixels)
    mean = np.asarray(card.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(card.std, dtype=np.float32).reshape(1, 3, 1, 1)
    x = pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return np.ascontiguousarray((x - mean) / std)
