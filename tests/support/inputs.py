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


# -- formats beyond the classic six, and files that make Pillow raise more than OSError ----------


def smooth_image(width: int = 320, height: int = 240) -> Image.Image:
    """Gradients and flat blocks: what lossy codecs (AVIF, HEIC) keep close to the source."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    pixels = np.stack([x + 0 * y, y + 0 * x, np.full((height, width), 90.0)], axis=-1)
    pixels[height // 4 : height // 2, width // 4 : width // 2] = (200, 30, 40)
    return Image.fromarray(pixels.astype(np.uint8))


def avif_bytes(image: Image.Image | None = None, quality: int = 90) -> bytes:
    """An AVIF written by Pillow (12+ with libavif)."""
    return encode(image or smooth_image(), "AVIF", quality=quality)


def heic_bytes(image: Image.Image | None = None, quality: int = 90) -> bytes:
    """A HEIC written by pillow-heif."""
    import pillow_heif

    buffer = io.BytesIO()
    pillow_heif.from_pillow(image or smooth_image()).save(buffer, quality=quality)
    return buffer.getvalue()


def tiff_with_strip_offsets_type(field_type: int) -> bytes:
    """An uncompressed TIFF whose StripOffsets tag (273) is re-typed in place.

    Type 5 (RATIONAL) makes Pillow raise `TypeError: 'IFDRational' object cannot be
    interpreted as an integer`; type 16 (LONG8) reads 8 bytes as one huge offset and
    makes it raise `OverflowError: Python int too large to convert to C ssize_t`.
    """
    pixels = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    data = bytearray(encode(Image.fromarray(pixels), "TIFF"))
    assert data[:2] == b"II"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        offset = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, offset)[0] == 273:
            struct.pack_into("<H", data, offset + 2, field_type)
            return bytes(data)
    raise AssertionError("no StripOffsets tag")


def hostile_inputs() -> dict[str, tuple[bytes, str | None]]:
    """file name -> (bytes, expected error kind or None when it must load): the inputs of issue 9."""
    avif = avif_bytes()
    return {
        "rational_offsets.tif": (tiff_with_strip_offsets_type(5), "corrupt"),
        "long8_offsets.tif": (tiff_with_strip_offsets_type(16), "corrupt"),
        "photo.avif": (avif, None),
        "photo.heic": (heic_bytes(), None),
        "cut.avif": (avif[: len(avif) // 2], "truncated"),
        "vector.svg": (
            b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>\n',
            "unsupported_format",
        ),
        "future.jxl": (b"\xff\x0a" + bytes(62), "unsupported_format"),
        "icon.ico": (encode(Image.new("RGB", (32, 32), (1, 2, 3)), "ICO"), "unsupported_format"),
    }


def write_hostile_inputs(directory: Path) -> dict[str, str | None]:
    """Write `hostile_inputs()` into `directory`; return file name -> expected error kind (None: ok)."""
    directory.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (data, kind) in hostile_inputs().items():
        (directory / name).write_bytes(data)
        expected[name] = kind
    return expected


# -- fuzzing: seeded mutations of small valid files of every decoded format -------------------------

FUZZ_MUTATIONS = ("bit_flips", "truncate", "duplicate_chunk", "header", "zero_run", "insert")


def fuzz_seeds() -> dict[str, bytes]:
    """Small valid files (file name -> bytes) of each format the fuzz test mutates."""
    image = smooth_image(96, 72)
    noisy = Image.fromarray(
        np.clip(
            np.asarray(image, dtype=np.int16) + np.random.default_rng(5).integers(-20, 20, (72, 96, 3)),
            0,
            255,
        ).astype(np.uint8)
    )
    frames = [noisy, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return {
        "seed.jpg": encode(noisy, "JPEG", quality=85),
        "progressive.jpg": encode(noisy, "JPEG", quality=85, progressive=True),
        "seed.png": encode(noisy, "PNG"),
        "rgba.png": encode(noisy.convert("RGBA"), "PNG"),
        "seed.tif": encode(noisy, "TIFF"),
        "lzw.tif": encode(noisy, "TIFF", compression="tiff_lzw"),
        "seed.webp": encode(noisy, "WEBP", quality=80),
        "seed.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "seed.avif": avif_bytes(noisy, quality=60),
    }


def mutate(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """One seeded mutation of `data` (see FUZZ_MUTATIONS)."""
    out = bytearray(data)
    n = len(out)
    if kind == "bit_flips":
        for position in rng.integers(0, n, int(rng.integers(1, 9))):
            out[position] ^= 1 << int(rng.integers(0, 8))
    elif kind == "truncate":
        del out[int(rng.integers(1, n)) :]
    elif kind == "duplicate_chunk":
        start = int(rng.integers(0, n))
        chunk = out[start : start + int(rng.integers(1, 512))]
        at = int(rng.integers(0, n))
        out[at:at] = chunk
    elif kind == "header" and data[:4] == b"II*\0" and rng.random() < 0.5:  # re-type one TIFF tag
        ifd = struct.unpack_from("<I", data, 4)[0]
        entry = ifd + 2 + 12 * int(rng.integers(0, struct.unpack_from("<H", data, ifd)[0]))
        struct.pack_into("<H", out, entry + 2, int(rng.integers(1, 19)))
    elif kind == "header":  # where sizes, offsets, tags and types live
        start, end = _header_span(data)
        for position in rng.integers(start, end, int(rng.integers(1, 5))):
            out[position] = int(
                rng.choice([0x00, 0x01, 0x05, 0x0C, 0x10, 0x7F, 0x80, 0xFF, int(rng.integers(0, 256))])
            )
    elif kind == "zero_run":
        start = int(rng.integers(0, n))
        out[start : start + int(rng.integers(1, 256))] = bytes(min(n - start, int(rng.integers(1, 256))))
    elif kind == "insert":
        at = int(rng.integers(0, n))
        out[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    else:
        raise ValueError(kind)
    return bytes(out)


def _header_span(data: bytes) -> tuple[int, int]:
    """The first 64 bytes; for a little-endian TIFF, its first IFD (tag types, counts and offsets)."""
    if data[:4] == b"II*\0":
        ifd = struct.unpack_from("<I", data, 4)[0]
        if ifd + 2 <= len(data):
            return ifd, min(len(data), ifd + 2 + 12 * struct.unpack_from("<H", data, ifd)[0])
    return 0, min(len(data), 64)


def fuzz_cases(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """`count` mutated files (unique names keeping their format's extension), the same for the same seed."""
    rng = np.random.default_rng(seed)
    seeds = sorted(fuzz_seeds().items())
    cases = []
    for i in range(count):
        name, data = seeds[i % len(seeds)]
        kind = FUZZ_MUTATIONS[(i // len(seeds)) % len(FUZZ_MUTATIONS)]
        stem, suffix = name.rsplit(".", 1)
        cases.append((f"{i:05d}-{stem}-{kind}.{suffix}", mutate(data, kind, rng)))
    return cases
