"""Images for calibration and the parity check, as the exported model will be fed them.

Real images go through `skutag.images.load_image` with the card's resize, crop and
interpolation, exactly as batchrun decodes them, into uint8 `[N, H, W, 3]` batches.
Selection is deterministic: the image files under a directory in sorted order, and,
when there are more than asked for, an evenly spaced subset (so an ImageFolder tree
sorted by class still gives every class). `plan` keeps the parity check's images
disjoint from the calibration images: by default the check uses the files of `--calib`
that calibration did not take. Synthetic images (when no directory is given for the
parity check of a float export) are rendered by `skutag.synth` and decoded the same way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skutag.card import ModelCard
from skutag.errors import InputError
from skutag.images import ImageError, display_path, model_pixels
from skutag.listing import local_path, walk_images
from skutag.normalize import normalize_nhwc_uint8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleSet:
    """Decoded images plus where they came from (for the report)."""

    pixels: np.ndarray  # uint8 [N, H, W, 3]
    source: str  # a directory, or "synthetic"
    skipped: int  # files that could not be decoded
    files: tuple[Path, ...] = ()  # the files chosen (decoded or skipped); empty for synthetic images

    def __len__(self) -> int:
        return len(self.pixels)

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "count": len(self), "skipped_undecodable": self.skipped}


def image_files(directory: str | Path) -> list[Path]:
    """Every image file under `directory` (recursive), sorted; InputError when there is none."""
    root = Path(directory)
    if not root.is_dir():
        raise InputError(f"image directory not found: {root}")
    # As every stage lists: hidden/AppleDouble skipped, symlinked folders once, non-UTF-8 names kept.
    files = [Path(os.fsdecode(local_path(e.uri))) for e in walk_images(root) if e.size is not None]
    if not files:
        raise InputError(f"no image files under {root}")
    return files


def spread(files: list[Path], count: int) -> list[Path]:
    """Up to `count` of `files`, evenly spaced over the list (all of them when there are fewer)."""
    if len(files) <= count:
        return list(files)
    picks = np.linspace(0, len(files) - 1, num=count).round().astype(int)
    return [files[i] for i in picks]


def select_files(directory: str | Path, count: int) -> list[Path]:
    """Up to `count` image files under `directory` (recursive), deterministic and spread evenly."""
    return spread(image_files(directory), count)


def plan(
    calib_dir: str | Path, calib_size: int, check_dir: str | Path | None, check_size: int
) -> tuple[list[Path], list[Path]]:
    """Calibration files and parity-check files, disjoint (the same file is never in both).

    With `check_dir`, the check takes up to `check_size` of its files that calibration does not
    use. Without it, the check takes the files of `calib_dir` that calibration leaves: calibration
    takes `calib_size` of them, but leaves at least min(check_size, N // 2) of the N files.
    """
    pool = image_files(calib_dir)
    if check_dir is None or Path(check_dir).resolve() == Path(calib_dir).resolve():
        reserve = min(check_size, len(pool) // 2)
        calibration = spread(pool, min(calib_size, len(pool) - reserve))
        used = set(calibration)
        check = spread([f for f in pool if f not in used], check_size)
        if not check:
            raise InputError(
                f"--calib {calib_dir} has {len(pool)} image(s): too few to calibrate and check parity on "
                "different images; add images or pass --check-images DIR"
            )
        return calibration, check
    calibration = spread(pool, calib_size)
    used = {f.resolve() for f in calibration}
    check = spread([f for f in image_files(check_dir) if f.resolve() not in used], check_size)
    if not check:
        raise InputError(
            f"every image under --check-images {check_dir} is a calibration image; parity must be checked "
            "on other images"
        )
    return calibration, check


def load_directory(directory: str | Path, card: ModelCard, count: int) -> SampleSet:
    """Decode up to `count` images from `directory` for `card`; undecodable files are skipped and counted."""
    return load_files(select_files(directory, count), card, str(directory))


def load_files(files: list[Path], card: ModelCard, source: str) -> SampleSet:
    """Decode `files` for `card`; undecodable files are skipped (logged) and counted."""
    images, skipped = [], 0
    for path in files:
        try:
            images.append(model_pixels(path, card))
        except ImageError as exc:
            skipped += 1
            log.warning("skipping %s: %s", display_path(path), exc.message)
    if not images:
        raise InputError(f"none of the image files under {source} could be decoded")
    return SampleSet(np.stack(images), source, skipped, tuple(files))


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
    images = [model_pixels(render_file(spec, i)[1], card) for i in range(count)]
    return SampleSet(np.stack(images), "synthetic", 0)


def batches(pixels: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(pixels), batch_size):
        yield pixels[start : start + batch_size]


def model_input(pixels: np.ndarray, card: ModelCard, input_kind: str) -> np.ndarray:
    """What the exported model takes: the uint8 NHWC pixels as they are, or float32 NCHW normalised."""
    if input_kind == "uint8":
        return np.ascontiguousarray(pixels)
    return normalize_nhwc_uint8(pixels, card.mean, card.std)
