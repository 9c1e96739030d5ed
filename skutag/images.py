"""Safe image decoding: the ONE preprocessing path of skutag.

From a path or bytes to a uint8 `[H, W, 3]` RGB array, resized (shorter side to
`resize_size`) and centre-cropped to `image_size`, plus the original width and
height. Trainer evaluation, export calibration and batchrun all call `load_image`,
so a model sees exactly the same pixels everywhere.

Every failure is an `ImageError` with a stable `kind` (see `ERROR_KINDS`), never a
warning and never silently padded pixels: decompression bombs, truncated files,
empty files, non-images, unsupported formats and unreadable files each have a name.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Formats Pillow may report for the files we accept. MPO is a multi-picture JPEG (cameras).
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own bomb threshold (~ 0.25 GB of RGBA)

ERROR_KINDS = {
    "empty": "the file has no bytes",
    "not_image": "the bytes are not an image Pillow recognises",
    "unsupported_format": "an image, but not JPEG, PNG, WebP, BMP, GIF or TIFF",
    "too_large": "more pixels than the decompression-bomb limit",
    "truncated": "the file ends before the image data does",
    "corrupt": "the image data is damaged",
    "unreadable": "the file cannot be read (missing, a directory, no permission, I/O error)",
}

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_TRANSPARENT_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION_TAG = 0x0112

# Truncated data must be an error, never grey padding.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(Exception):
    """An input that cannot become pixels. `kind` is one of `ERROR_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        assert kind in ERROR_KINDS, kind
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class DecodedImage:
    """Pixels ready for a model, plus facts about the original file."""

    pixels: np.ndarray  # uint8 [H, W, 3] RGB, C-contiguous
    width: int  # of the original image, upright (after EXIF orientation)
    height: int
    format: str  # as Pillow names it: JPEG, PNG, ...


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a file, turning OS errors into `ImageError('unreadable')`."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ImageError("unreadable", f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from exc


def load_image(
    source: str | os.PathLike | bytes,
    *,
    resize_size: int | None = 256,
    image_size: int | None = 224,
    interpolation: str = "bilinear",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodedImage:
    """Decode `source` (a path or the file's bytes) to model-ready RGB pixels.

    The shorter side is resized to `resize_size` (aspect kept, as torchvision's
    `Resize(int)`), then the centre `image_size` square is cropped (as `CenterCrop`).
    `resize_size=None` keeps the decoded size; `image_size=None` skips the crop.
    """
    data = source if isinstance(source, bytes | bytearray | memoryview) else read_bytes(source)
    image = open_image(data, max_pixels=max_pixels)
    file_format = image.format
    orientation = exif_orientation(image)
    width, height = image.size
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    if resize_size is not None and file_format in ("JPEG", "MPO"):
        _draft(image, resize_size)
    image = _decode(image)
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    image = resize_and_crop(to_rgb(image), resize_size, image_size, interpolation)
    pixels = np.asarray(image, dtype=np.uint8)
    return DecodedImage(np.ascontiguousarray(pixels), width, height, file_format)


def open_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open (header only) and vet: not empty, an image, an accepted format, not a bomb."""
    if len(data) == 0:
        raise ImageError("empty", "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("too_large", f"decompression bomb refused: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not_image", "not an image (no known image header)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("corrupt", f"cannot parse the image header: {exc}") from exc
    if image.format not in ACCEPTED_FORMATS:
        raise ImageError("unsupported_format", f"{image.format} images are not supported")
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError("corrupt", f"image header has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError("too_large", f"{width}x{height} pixels exceeds the limit of {max_pixels}")
    return image


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright); a damaged EXIF block counts as upright."""
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # a damaged EXIF block must not fail an otherwise good image
        return 1


def _draft(image: Image.Image, resize_size: int) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the shorter side stays >= resize_size."""
    width, height = image.size
    scale = resize_size / min(width, height)
    if scale < 1:
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))


def _decode(image: Image.Image) -> Image.Image:
    """Decode the pixel data, naming truncation and damage."""
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("too_large", f"decompression bomb refused: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as exc:
        text = str(exc)
        if "truncated" in text or "broken data stream" in text or isinstance(exc, EOFError):
            raise ImageError("truncated", f"truncated image data: {text}") from exc
        raise ImageError("corrupt", f"damaged image data: {text}") from exc
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: transparency composited on white, 16-bit scaled (not clipped)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(image)
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        scale = 255.0 if float(values.max(initial=0.0)) <= 1.0 else 1.0
        return Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if mode in _TRANSPARENT_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float32)
    # 65535 -> 255 exactly; round to nearest.
    gray = np.clip(values / 257.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision `Resize(size)`: shorter side to `size`, the other int(size * long / short)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def resize_and_crop(
    image: Image.Image, resize_size: int | None, image_size: int | None, interpolation: str = "bilinear"
) -> Image.Image:
    """torchvision `Resize(resize_size)` then `CenterCrop(image_size)`; either may be None (skipped).

    Done as ONE resampling of only the region that survives the crop (Pillow's `box`):
    the sampling grid and filter support are those of resize-then-crop (pixels agree to
    within 1 of rounding), without resampling the margins the crop throws away.
    """
    new_size = image.size if resize_size is None else resized_size(*image.size, resize_size)
    if image_size is None:
        return image if new_size == image.size else image.resize(new_size, _RESAMPLING[interpolation])
    left, top, right, bottom = center_box(new_size, image_size)
    if new_size == image.size:
        return image.crop((left, top, right, bottom))
    scale_x, scale_y = image.size[0] / new_size[0], image.size[1] / new_size[1]
    box = (left * scale_x, top * scale_y, right * scale_x, bottom * scale_y)
    return image.resize((image_size, image_size), _RESAMPLING[interpolation], box=box)


def center_box(size: tuple[int, int], crop: int) -> tuple[int, int, int, int]:
    """torchvision `CenterCrop` offsets (round-half-even) of a `crop` square inside `size`."""
    width, height = size
    if width < crop or height < crop:
        raise ValueError(f"cannot centre-crop {crop}x{crop} from {width}x{height}; resize first")
    left = int(round((width - crop) / 2.0))
    top = int(round((height - crop) / 2.0))
    return left, top, left + crop, top + crop


def is_image_path(path: str | os.PathLike) -> bool:
    """By extension, case-insensitive: the files a directory source yields."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
