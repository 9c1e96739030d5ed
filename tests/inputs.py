"""Builders for test inputs: every bad-input kind of skutag.images, and the good-but-awkward ones.

Shared by the image tests and the stage tests (batchrun must give each of these its row).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds almost no data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def noise_jpeg(width: int = 800, height: int = 600, seed: int = 2) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=90)


def rotated_jpeg() -> bytes:
    """Stored 320x256, left red / right blue, EXIF orientation 6: displays 256x320, red on top."""
    stored = Image.new("RGB", (320, 256), (220, 0, 0))
    stored.paste((0, 0, 220), (160, 0, 320, 256))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=95, exif=exif)


def awkward_inputs() -> dict[str, tuple[bytes, str | None]]:
    """file name -> (bytes, expected error kind or None when the image must load)."""
    palette = Image.new("P", (300, 300), 0)
    palette.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    palette.paste(1, (150, 0, 300, 300))
    one_bit = Image.new("1", (300, 300), 0)
    one_bit.paste(1, (0, 0, 300, 150))
    jpeg = noise_jpeg()
    return {
        "zero.jpg": (b"", "empty"),
        "notes.jpg": (b"a product description, not a photo\n", "not_image"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "bomb.png": (png_header_only(30000, 30000), "too_large"),
        "portable.jpg": (encode(Image.new("RGB", (300, 300)), "PPM"), "unsupported_format"),
        "cmyk.jpg": (encode(Image.new("CMYK", (400, 300), (0, 255, 255, 0)), "JPEG", quality=95), None),
        "sixteen.png": (encode(Image.fromarray(np.full((300, 300), 40000, dtype=np.uint16)), "PNG"), None),
        "palette_transparent.png": (encode(palette, "PNG", transparency=0), None),
        "rgba.png": (encode(Image.new("RGBA", (300, 300), (255, 0, 0, 128)), "PNG"), None),
        "rotated.jpg": (rotated_jpeg(), None),
        "one_bit.png": (encode(one_bit, "PNG"), None),
    }


def write_awkward_inputs(directory: Path) -> dict[str, str | None]:
    """Write `awkward_inputs()` into `directory`; return file name -> expected error kind (None: ok)."""
    directory.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (data, kind) in awkward_inputs().items():
        (directory / name).write_bytes(data)
        expected[name] = kind
    return expected
