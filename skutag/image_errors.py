"""What can be wrong with an input image: the stable error kinds, `ImageError`, and `classify`, which turns
whatever a decoder raised into one of them (never another exception type)."""

from __future__ import annotations

import multiprocessing

from PIL import Image

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
