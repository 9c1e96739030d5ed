"""Which image formats skutag decodes, which it recognises but refuses, and how it tells them apart.

- `ACCEPTED_FORMATS`: what `skutag.images` decodes (Pillow's format names). AVIF is
  Pillow's own from 12 on (when built with libavif: `PIL.features.check("avif")`);
  HEIC/HEIF comes from `pillow-heif`, whose opener is registered on first need
  (`ensure_heif`), so the JPEG path never imports it.
- `IMAGE_EXTENSIONS`: the file names a directory listing treats as inputs. It also
  names well-known image formats skutag does not decode (JPEG 2000, JPEG XL,
  Photoshop, icons, TGA, SVG, ...): they become `unsupported_format` rows, never a
  silent skip.
- `sniff(data)`: the format family from the first bytes, for files Pillow cannot
  identify (JPEG XL, SVG, HEIC without pillow-heif, AVIF without libavif), so those
  are named `unsupported_format` instead of `not_image`.
"""

from __future__ import annotations

import threading

# Pillow's names. MPO is a multi-picture JPEG (cameras); HEIF is pillow-heif's name for HEIC/HEIF.
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF", "AVIF", "HEIF"})
DECODED_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".png",
        ".webp",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".avif",
        ".heic",
        ".heif",
        ".hif",
    }
)
# Recognised as images, not decoded: each one gets an `unsupported_format` row.
UNSUPPORTED_EXTENSIONS = frozenset(
    {
        ".jp2", ".j2k", ".jpf", ".jpx", ".jpm",  # JPEG 2000
        ".jxl",  # JPEG XL
        ".jxr", ".wdp", ".hdp",  # JPEG XR
        ".psd", ".psb",  # Photoshop
        ".ico", ".icns", ".cur",  # icons
        ".tga", ".pcx", ".ppm", ".pgm", ".pbm", ".pnm", ".qoi", ".dds", ".xbm", ".xpm",
        ".svg", ".svgz", ".eps",  # vector
        ".exr", ".hdr",  # HDR
    }
)  # fmt: skip
IMAGE_EXTENSIONS = DECODED_EXTENSIONS | UNSUPPORTED_EXTENSIONS

_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
_HEIF_HINT = "HEIC/HEIF images need pillow-heif (pip install pillow-heif)"

_lock = threading.Lock()
_heif_error: str | None = None  # why pillow-heif is unusable; None: usable or not tried
_heif_ready = False


def sniff(data: bytes | memoryview) -> str | None:
    """The format family of `data` from its first bytes: 'AVIF', 'HEIF', 'JXL', 'SVG', or None."""
    head = bytes(data[:64])
    if head[4:8] == b"ftyp":
        size = int.from_bytes(head[:4], "big")
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, min(max(size, 16), len(head)) - 3, 4)}
        if brands & _AVIF_BRANDS:
            return "AVIF"
        if brands & _HEIF_BRANDS:
            return "HEIF"
        return None
    if head.startswith(b"\xff\x0a") or head.startswith(_JXL_CONTAINER):
        return "JXL"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in bytes(data[:1024]).lower()):
        return "SVG"
    return None


def bmff_truncated(data: bytes | memoryview) -> bool:
    """An ISO-BMFF file (AVIF, HEIC) whose top-level boxes claim more bytes than it has."""
    offset, end = 0, len(data)
    while offset + 8 <= end:
        size = int.from_bytes(data[offset : offset + 4], "big")
        if size == 1 and offset + 16 <= end:  # a 64-bit size follows the type
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
        elif size == 0:  # to the end of the file
            return False
        if size < 8:
            return False  # damaged, not short
        offset += size
    return offset > end


def ensure_heif() -> str | None:
    """Register pillow-heif's HEIC/HEIF opener once; None when it is usable, else why not."""
    global _heif_error, _heif_ready
    if _heif_ready or _heif_error is not None:
        return _heif_error
    with _lock:
        if not _heif_ready and _heif_error is None:
            try:
                from pillow_heif import register_heif_opener

                register_heif_opener()
                _heif_ready = True
            except Exception as exc:  # not installed, or a broken libheif
                _heif_error = f"{_HEIF_HINT}; it cannot be used here ({type(exc).__name__}: {exc})"
    return _heif_error


def avif_available() -> bool:
    """Pillow 12+ built with libavif decodes AVIF."""
    from PIL import features

    try:
        return bool(features.check("avif"))
    except Exception:  # an older Pillow without the 'avif' feature name
        return False


def decoders() -> dict[str, bool]:
    """Which optional decoders this environment has (HEIC/HEIF through pillow-heif, AVIF through
    libavif): an `unsupported_format` row made without one is read again where it is there."""
    import importlib.util

    return {"heif": importlib.util.find_spec("pillow_heif") is not None, "avif": avif_available()}


def missing_decoder(family: str | None) -> str | None:
    """Why a sniffed AVIF or HEIF file cannot be decoded here (None: it can, or it is neither)."""
    if family == "HEIF":
        return ensure_heif()
    if family == "AVIF" and not avif_available():
        return "AVIF images need Pillow >= 12 built with libavif"
    return None


def undecoded_reason(family: str | None) -> str | None:
    """For a file Pillow cannot identify: the message when its first bytes name a format we do not decode."""
    return {"JXL": "JPEG XL images are not supported", "SVG": "SVG (vector) images are not supported"}.get(
        family or ""
    )
