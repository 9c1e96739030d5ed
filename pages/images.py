"""The photos the pages show: read one row's image (local, file:// or object store), shrink it to a
small JPEG. Only uris that OUT's committed rows name are ever read (the callers look them up by id)."""

from __future__ import annotations

import io
from typing import Any

from skutag import storage
from skutag.entries import local_path
from skutag.images import open_image, read_file, to_rgb

THUMB_PX = 128
MAX_BYTES = 64 * 1024 * 1024


def read_image(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The file's bytes (at most MAX_BYTES)."""
    if storage.is_remote(uri):
        return storage.read_object(uri, storage_options, max_bytes=MAX_BYTES)
    return read_file(local_path(uri), max_bytes=MAX_BYTES)


def jpeg(data: bytes, size: int = THUMB_PX, quality: int = 80) -> bytes:
    """`data` (any format skutag decodes) as an upright JPEG that fits in size x size."""
    from PIL import ImageOps

    image = open_image(data)
    image.draft("RGB", (size, size))
    image = to_rgb(ImageOps.exif_transpose(image))
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
