"""Reading input files: sized before they are read (`max_bytes`), transient OS errors retried, every
failure an `ImageError` (`unreadable`, `too_large`); names for messages; which paths are images."""

from __future__ import annotations

import os
import stat

from skutag.formats import IMAGE_EXTENSIONS
from skutag.image_errors import ImageError

# 256 MiB. Pillow's pixel limit above is 2**30 // 4 // 3 pixels, so this is an UNCOMPRESSED
# 8-bit RGB image at that limit (89.5 MP x 3 bytes), the largest file a decodable image needs
# without compression. Real inputs are far below it: the catalog photos in ../shared/data are
# 40-400 KB (1000-1580 px JPEG), a 24 MP camera JPEG is 5-15 MB, a 600 dpi A4 RGB scan is
# 100 MB as an uncompressed TIFF (35 MP). Bigger files are 16-bit or multi-page scans or junk:
# refusing them from their size keeps every decode worker's memory bounded.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


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


def is_image_path(path: str | bytes | os.PathLike) -> bool:
    """By extension, case-insensitive: the files a directory source yields (unsupported image formats too)."""
    return os.path.splitext(os.fsdecode(path))[1].lower() in IMAGE_EXTENSIONS
