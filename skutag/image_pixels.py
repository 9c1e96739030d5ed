"""A decoded Pillow image to model pixels: EXIF orientation, JPEG draft scaling, any mode to RGB, and
torchvision's `Resize` + `CenterCrop` geometry done as one resampling. `skutag.images` composes them."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_TRANSPARENT_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION_TAG = 0x0112


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright); a damaged EXIF block counts as upright."""
    try:
        value = int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # a damaged EXIF block must not fail an otherwise good image
        return 1
    return value if 1 <= value <= 8 else 1


def draft(image: Image.Image, resize_size: int) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the shorter side stays >= resize_size."""
    width, height = image.size
    scale = resize_size / min(width, height)
    if scale < 1:
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))


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
        return image if new_size == image.size else image.resize(new_size, RESAMPLING[interpolation])
    left, top, right, bottom = center_box(new_size, image_size)
    if new_size == image.size:
        return image.crop((left, top, right, bottom))
    scale_x, scale_y = image.size[0] / new_size[0], image.size[1] / new_size[1]
    box = (left * scale_x, top * scale_y, right * scale_x, bottom * scale_y)
    return image.resize((image_size, image_size), RESAMPLING[interpolation], box=box)


def center_box(size: tuple[int, int], crop: int) -> tuple[int, int, int, int]:
    """torchvision `CenterCrop` offsets (round-half-even) of a `crop` square inside `size`."""
    width, height = size
    if width < crop or height < crop:
        raise ValueError(f"cannot centre-crop {crop}x{crop} from {width}x{height}; resize first")
    left = int(round((width - crop) / 2.0))
    top = int(round((height - crop) / 2.0))
    return left, top, left + crop, top + crop
