"""Which inputs the GPU may decode: a header check on the CPU, cheap next to any decode.

The GPU takes 8-bit sequential Huffman-coded JPEGs (baseline, extended) with one (grey)
or three (YCbCr) components: nvJPEG decodes them on the GPU, on A100/H100 in its hardware
JPEG engines. Progressive JPEGs stay on the CPU: nvJPEG decodes their Huffman data on the
host, one image after another in the calling thread, while the CPU path decodes them in
every worker at once with DCT scaling (benchmarks/gpu_suite.py measures both). Everything
else (PNG, WebP, GIF, TIFF, AVIF, HEIC, MPO, CMYK/YCCK, RGB-coded or 12-bit or lossless or
arithmetic-coded JPEGs, a scan without its end-of-image marker, a header Pillow refuses)
is decoded on the CPU by `skutag.images.load_image`, so its row and error kind are exactly
those of the CPU path.

`gpu_job` never raises: when in doubt the answer is None (decode on the CPU).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

from skutag.images import DEFAULT_MAX_PIXELS, exif_orientation

# Start-of-frame markers sent to the GPU: SOF0 baseline, SOF1 extended sequential (Huffman).
# SOF2 progressive: see the module docstring. SOF3 (lossless), SOF5-7 (hierarchical) and
# SOF9-15 (arithmetic coding) nvJPEG does not decode.
GPU_FRAMES = frozenset({0xC0, 0xC1})
_NOT_FRAMES = frozenset({0xC4, 0xC8, 0xCC})  # DHT, JPG (reserved), DAC share the SOFn range
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass(frozen=True)
class GpuJob:
    """A JPEG the GPU may decode, and what the CPU read from its header."""

    width: int  # upright (after EXIF orientation), as the CPU path reports it
    height: int
    orientation: int  # EXIF orientation (1 = upright), applied after decoding

    @property
    def stored_size(self) -> tuple[int, int]:
        """(width, height) as stored in the file, before orientation: what the decoder returns."""
        if self.orientation in _SWAPPING_ORIENTATIONS:
            return self.height, self.width
        return self.width, self.height


@dataclass(frozen=True)
class Frame:
    """The parts of a JPEG header that decide where it can be decoded."""

    marker: int  # the SOFn marker byte (0xC0 ...)
    precision: int  # bits per sample
    component_ids: bytes  # one byte per component
    scan_offset: int  # where the first start-of-scan marker is


def jpeg_frame(data: bytes | bytearray | memoryview) -> Frame | None:
    """Walk the JPEG segments up to the first scan; None when the bytes are not a well-formed JPEG header."""
    view = memoryview(data)
    if len(view) < 4 or view[0] != 0xFF or view[1] != 0xD8:
        return None
    position, frame = 2, None
    while position + 4 <= len(view):
        if view[position] != 0xFF:
            return None
        marker = view[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # segments without a length
            position += 2
            continue
        length = (view[position + 2] << 8) | view[position + 3]
        if length < 2:
            return None
        if 0xC0 <= marker <= 0xCF and marker not in _NOT_FRAMES:
            if length < 8 or position + 2 + length > len(view):
                return None
            count = view[position + 9]
            ids = bytes(view[position + 10 : position + 10 + 3 * count : 3])
            frame = (marker, view[position + 4], ids)
        if marker == 0xDA:
            return None if frame is None else Frame(frame[0], frame[1], frame[2], position)
        position += 2 + length
    return None


def gpu_job(data: bytes | bytearray | memoryview, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> GpuJob | None:
    """The facts the GPU decoder needs, or None: this input goes through the CPU path."""
    frame = jpeg_frame(data)
    if frame is None or frame.marker not in GPU_FRAMES or frame.precision != 8:
        return None
    if len(frame.component_ids) not in (1, 3) or frame.component_ids == b"RGB":
        return None  # CMYK/YCCK, or components named R, G, B (stored as RGB, not YCbCr)
    raw = bytes(data)  # the same object when `data` is bytes
    if not raw.endswith(b"\xff\xd9") and raw.rfind(b"\xff\xd9") < frame.scan_offset:
        return None  # truncated: no end-of-image marker after the first scan
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(raw))
            width, height = image.size
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                return None  # MPO, CMYK, ...
            if len(frame.component_ids) == 3 and image.info.get("adobe_transform") == 0:
                return None  # Adobe marker: the three components are RGB, not YCbCr
            orientation = exif_orientation(image)
    except Exception:  # a header Pillow refuses: the CPU path says why, in its own words
        return None
    if width <= 0 or height <= 0 or width * height > max_pixels:
        return None  # the CPU path reports it (corrupt, too_large)
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return GpuJob(width, height, orientation)
