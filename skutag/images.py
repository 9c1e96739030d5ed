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
SystemExit pass through. Which formats are decoded lives in `skutag.formats`.
"""

from __future__ import annotations

import io
import logging
import math
import multiprocessing
import os
import stat
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from skutag import formats
from skutag.formats import ACCEPTED_FORMATS, IMAGE_EXTENSIONS  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from skutag.card import ModelCard

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own bomb threshold (~ 0.25 GB of RGBA)
# 256 MiB. Pillow's pixel limit above is 2**30 // 4 // 3 pixels, so this is an UNCOMPRESSED
# 8-bit RGB image at that limit (89.5 MP x 3 bytes), the largest file a decodable image needs
# without compression. Real inputs are far below it: the catalog photos in ../shared/data are
# 40-400 KB (1000-1580 px JPEG), a 24 MP camera JPEG is 5-15 MB, a 600 dpi A4 RGB scan is
# 100 MB as an uncompressed TIFF (35 MP). Bigger files are 16-bit or multi-page scans or junk:
# refusing them from their size keeps every decode worker's memory bounded.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024

ERROR_KINDS = {
    "empty": "the file has no bytes",
    "not_image": "the bytes are not an image Pillow recognises",
    "unsupported_format": "an image, but not JPEG, PNG, WebP, BMP, GIF, TIFF, AVIF or HEIC/HEIF "
    "(or its decoder is not installed)",
    "too_large": "more bytes than the size limit (--max-bytes), more pixels than the decompression-bomb limit, "
    "or out of memory while decoding it",
    "truncated": "the file ends before the image data does",
    "corrupt": "the image data is damaged (the decoder raised an error)",
    "unreadable": "the file cannot be read (missing, a directory, no permission, I/O error)",
    "timeout": "decoding took longer than the per-input time limit (assigned by the batch run)",
    "crashed": "the decoder process died on this input (assigned by the batch run)",
}
# Words in a decoder's message that mean the data stops early.
_TRUNCATION_WORDS = (
    "truncated",
    "broken data stream",
    "not enough image data",
    "not enough data",
    "premature end",
    "unexpected end",
    "end of file",
)

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

# Pillow logs some damage at ERROR level (PIL.TiffImagePlugin) before it raises: the exception
# becomes the row's message, so the log line would only be noise on stderr. A level set by the
# user is kept.
if logging.getLogger("PIL").level == logging.NOTSET:
    logging.getLogger("PIL").setLevel(logging.CRITICAL)

# Truncated data must be an error, never grey padding.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(Exception):
    """An input that cannot become pixels. `kind` is one of `ERROR_KINDS`; `cause`, for a read that
    failed at the store, its storage-level cause (`skutag.retries.cause_of`: from the client's code)."""

    def __init__(self, kind: str, message: str, cause: str | None = None) -> None:
        assert kind in ERROR_KINDS, kind
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")  # Parquet needs valid UTF-8
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.cause = cause

    def __reduce__(self):  # crosses process boundaries (decode workers) intact
        return (type(self), (self.kind, self.message, self.cause))


@dataclass(frozen=True)
class DecodedImage:
    """Pixels ready for a model, plus facts about the original file."""

    pixels: np.ndarray  # uint8 [H, W, 3] RGB, C-contiguous
    width: int  # of the original image, upright (after EXIF orientation)
    height: int
    format: str  # as Pillow names it: JPEG, PNG, ...


def read_file(path: str | bytes | os.PathLike, *, max_bytes: int | None = DEFAULT_MAX_BYTES) -> bytes:
    """A file's bytes, sized first: more than `max_bytes` is `too_large` before anything is read.

    Reads at most `max_bytes + 1` bytes (a file that grows while it is read is refused too).
    `path` may be str, bytes (a non-UTF-8 name) or PathLike. A directory, FIFO or device is
    `unreadable` (opened non-blocking, never read). OS errors that may pass (EIO, ESTALE,
    timeouts: `skutag.storage.is_transient`) are retried with backoff; what remains is
    `unreadable`. `max_bytes=None` means no limit.
    """
    from skutag.retries import DENIED, RETRIES, retry

    try:
        data = retry(lambda: _read_sized(path, max_bytes), attempts=RETRIES)
    except _Refused as refused:
        raise refused.error from None
    except (OSError, ValueError) as exc:  # ValueError: a name with a NUL byte
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        cause = DENIED if isinstance(exc, PermissionError) else None  # the guard's evidence
        raise ImageError("unreadable", f"cannot read {display_path(path)}: {detail}", cause) from exc
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageError(
            "too_large", f"over the size limit of {max_bytes:,} bytes (max-bytes; the file grew while read)"
        )
    return data


def read_bytes(path: str | bytes | os.PathLike, max_bytes: int | None = DEFAULT_MAX_BYTES) -> bytes:
    """`read_file` under its old name: a file's bytes, or `ImageError` ('unreadable', 'too_large')."""
    return read_file(path, max_bytes=max_bytes)


class _Refused(Exception):
    """Carries a final ImageError out of `storage.retry` (no text, so never mistaken for a transient error)."""

    def __init__(self, error: ImageError) -> None:
        super().__init__()
        self.error = error


_OPEN_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
)


def _read_sized(path: str | bytes | os.PathLike, max_bytes: int | None) -> bytes:
    """Open (non-blocking: a FIFO must not hang us), size from the open file, then read."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Refused(ImageError("unreadable", f"cannot read {display_path(path)}: not a regular file"))
        if max_bytes is not None and info.st_size > max_bytes:
            message = (
                f"{info.st_size:,} bytes is over the size limit of {max_bytes:,} bytes (max-bytes); not read"
            )
            raise _Refused(ImageError("too_large", message))
        return _read_at_most(fd, info.st_size, max_bytes)
    finally:
        os.close(fd)


def _read_at_most(fd: int, size: int, max_bytes: int | None) -> bytes:
    """The file's bytes, never more than `max_bytes + 1`; asks for `size + 1` (no huge buffer), then
    reads on until end of file or the limit (the file may have grown since it was sized)."""
    limit = None if max_bytes is None else max_bytes + 1
    chunks, total = [], 0
    want = size + 1 if limit is None else min(size + 1, limit)
    while True:
        chunk = os.read(fd, want)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if limit is not None and total >= limit:
            break
        want = max(1 << 20, size) if limit is None else min(max(1 << 20, size), limit - total)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def display_path(path: str | bytes | os.PathLike) -> str:
    """A path for messages: valid UTF-8 always (undecodable bytes shown as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


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
    if interpolation not in _RESAMPLING:
        raise ValueError(f"unknown interpolation {interpolation!r}; one of {sorted(_RESAMPLING)}")
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
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    if resize_size is not None and file_format in ("JPEG", "MPO"):
        _draft(image, resize_size)
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


def classify(exc: Exception, what: str) -> ImageError:
    """Any exception a decoder raised, as an `ImageError` of a stable kind whose message names it."""
    if isinstance(exc, ImageError):
        return exc
    text = " ".join(str(exc).split())[:500]  # one line, whatever the decoder's formatting
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return ImageError("too_large", f"decompression bomb refused: {exc}")
    if isinstance(exc, MemoryError):
        if multiprocessing.parent_process() is None:
            raise exc  # the main process is short of memory: that is no fact about this image
        return ImageError("too_large", f"{what}: out of memory while decoding ({detail})")
    if isinstance(exc, EOFError) or any(word in text.lower() for word in _TRUNCATION_WORDS):
        return ImageError("truncated", f"truncated image data ({detail})")
    return ImageError("corrupt", f"{what}: damaged image data ({detail})")


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


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright); a damaged EXIF block counts as upright."""
    try:
        value = int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # a damaged EXIF block must not fail an otherwise good image
        return 1
    return value if 1 <= value <= 8 else 1


def _draft(image: Image.Image, resize_size: int) -> None:
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


def is_image_path(path: str | bytes | os.PathLike) -> bool:
    """By extension, case-insensitive: the files a directory source yields (unsupported image formats too)."""
    return os.path.splitext(os.fsdecode(path))[1].lower() in IMAGE_EXTENSIONS
