"""Safe image decoding: the ONE preprocessing path of skutag.

From a path or bytes to a uint8 `[H, W, 3]` RGB array, resized (shorter side to
`resize_size`) and centre-cropped to `image_size`, plus the original width and
height. Trainer evaluation, export calibration and batchrun all call `load_image`,
so a model sees exactly the same pixels everywhere.

Every failure with the bytes is an `ImageError` with a stable `kind` (see
`ERROR_KINDS`), whatever Pillow or a plugin raised (OSError, OverflowError,
TypeError, RuntimeError, struct.error, MemoryError, ...): never another exception
type, never a warning on stderr and never silently padded pixels. Files are sized
before they are read (`read_file`, `max_bytes`). Only KeyboardInterrupt and
SystemExit pass through.

This module opens and vets an image and composes the steps; each part lives in its own module and is
re-exported here: the error kinds (`skutag.image_errors`), reading files (`skutag.image_files`), the
pixels' orientation, mode and geometry (`skutag.image_pixels`), which formats are decoded
(`skutag.formats`).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from skutag import formats
from skutag.formats import ACCEPTED_FORMATS, IMAGE_EXTENSIONS  # noqa: F401  (re-exported)

# The parts, re-exported: one import name for every caller (`from skutag.images import ...`).
from skutag.image_errors import ERROR_KINDS, ImageError, classify  # noqa: F401
from skutag.image_files import (  # noqa: F401
    DEFAULT_MAX_BYTES,
    display_path,
    is_image_path,
    read_bytes,
    read_file,
)
from skutag.image_pixels import (  # noqa: F401
    RESAMPLING,
    SWAPPING_ORIENTATIONS,
    center_box,
    draft,
    exif_orientation,
    resize_and_crop,
    resized_size,
    to_rgb,
)

if TYPE_CHECKING:
    from skutag.card import ModelCard

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own bomb threshold (~ 0.25 GB of RGBA)

# Pillow logs some damage at ERROR level (PIL.TiffImagePlugin) before it raises: the exception
# becomes the row's message, so the log line would only be noise on stderr. A level set by the
# user is kept.
if logging.getLogger("PIL").level == logging.NOTSET:
    logging.getLogger("PIL").setLevel(logging.CRITICAL)

# Truncated data must be an error, never grey padding.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class DecodedImage:
    """Pixels ready for a model, plus facts about the original file."""

    pixels: np.ndarray  # uint8 [H, W, 3] RGB, C-contiguous
    width: int  # of the original image, upright (after EXIF orientation)
    height: int
    format: str  # as Pillow names it: JPEG, PNG, ...


def model_pixels(source: str | bytes | os.PathLike, card: ModelCard) -> np.ndarray:
    """One image as the model of `card` sees it: uint8 [H, W, 3] after its resize and crop."""
    return load_image(
        source, resize_size=card.resize_size, image_size=card.image_size, interpolation=card.interpolation
    ).pixels


def load_image(
    source: str | bytes | os.PathLike,
    *,
    resize_size: int | None = 256,
    image_size: int | None = 224,
    interpolation: str = "bilinear",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> DecodedImage:
    """Decode `source` (a path, or the file's bytes as `bytes`/`bytearray`/`memoryview`) to model-ready RGB pixels.

    The shorter side is resized to `resize_size` (aspect kept, as torchvision's
    `Resize(int)`), then the centre `image_size` square is cropped (as `CenterCrop`).
    `resize_size=None` keeps the decoded size; `image_size=None` skips the crop.
    `bytes` are the file's CONTENTS: for a file name that is bytes (non-UTF-8, from
    `skutag.listing.local_path`) pass `read_file(name)`. `max_bytes` limits reading a path only.
    Raises only `ImageError` for bad inputs.
    """
    if interpolation not in RESAMPLING:
        raise ValueError(f"unknown interpolation {interpolation!r}; one of {sorted(RESAMPLING)}")
    if isinstance(source, bytes | bytearray | memoryview):
        data = source  # already read: whoever read it applied the size limit
    else:
        data = read_file(source, max_bytes=max_bytes)
    image = open_image(data, max_pixels=max_pixels)
    try:
        with _quiet():
            return _pixels(image, resize_size, image_size, interpolation)
    except ImageError:
        raise
    except Exception as exc:
        raise classify(exc, "cannot decode the image") from exc


def _pixels(
    image: Image.Image, resize_size: int | None, image_size: int | None, interpolation: str
) -> DecodedImage:
    file_format = image.format or "unknown"
    orientation = exif_orientation(image)
    width, height = image.size
    if orientation in SWAPPING_ORIENTATIONS:
        width, height = height, width
    if resize_size is not None and file_format in ("JPEG", "MPO"):
        draft(image, resize_size)
    image.load()
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    if image_size is not None and resize_size is None and min(image.size) < image_size:
        raise ImageError(
            "corrupt", f"{image.size[0]}x{image.size[1]} is too small to crop {image_size} (no resize)"
        )
    image = resize_and_crop(to_rgb(image), resize_size, image_size, interpolation)
    pixels = np.asarray(image, dtype=np.uint8)
    return DecodedImage(np.ascontiguousarray(pixels), width, height, file_format)


def open_image(data: bytes | bytearray | memoryview, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open (header only) and vet: not empty, an image, an accepted format, not a bomb."""
    if len(data) == 0:
        raise ImageError("empty", "the file is empty (0 bytes)")
    family = formats.sniff(data)
    missing = formats.missing_decoder(family)  # registers pillow-heif's opener on the first HEIC
    if missing is not None:
        raise ImageError("unsupported_format", missing)
    try:
        with _quiet():
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        reason = formats.undecoded_reason(family)
        if reason is not None:
            raise ImageError("unsupported_format", reason) from exc
        if family is not None and formats.bmff_truncated(data):
            raise ImageError(
                "truncated", f"a truncated {family} file (its boxes claim more bytes than it has)"
            ) from exc
        if family is not None:
            raise ImageError(
                "corrupt", f"a damaged {family} file (its decoder does not recognise it)"
            ) from exc
        raise ImageError("not_image", "not an image (no known image header)") from exc
    except Exception as exc:
        raise classify(exc, "cannot parse the image header") from exc
    if image.format == "TIFF":
        _silence_libtiff()
    if image.format not in ACCEPTED_FORMATS:
        raise ImageError("unsupported_format", f"{image.format} images are not supported")
    try:
        width, height = image.size
    except Exception as exc:
        raise classify(exc, "cannot parse the image header") from exc
    if width <= 0 or height <= 0:
        raise ImageError("corrupt", f"image header has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError("too_large", f"{width}x{height} pixels exceeds the limit of {max_pixels}")
    return image


class _quiet(warnings.catch_warnings):
    """Decoder warnings stay out of stderr; a decompression-bomb warning becomes an error."""

    def __enter__(self):
        result = super().__enter__()
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return result


def _silence_libtiff() -> None:
    """libtiff prints warnings and errors to stderr itself ('Using code not yet in table.'): turn them off.

    Its return codes are unchanged, so Pillow still raises, and the row carries that error.
    Done once, on the first TIFF, on the libtiff this process has loaded (Linux; elsewhere a no-op).
    """
    global _libtiff_silenced
    if _libtiff_silenced:
        return
    _libtiff_silenced = True
    try:
        import ctypes

        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libtiff" in line.rsplit("/", 1)[-1]}
        for path in paths:
            library = ctypes.CDLL(path)
            for setter in ("TIFFSetWarningHandler", "TIFFSetErrorHandler"):
                getattr(library, setter).restype = ctypes.c_void_p
                getattr(library, setter)(None)
    except Exception:  # not Linux, or no libtiff loaded: nothing printed to silence here
        pass


_libtiff_silenced = False
