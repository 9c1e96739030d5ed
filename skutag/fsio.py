"""Atomic file writes and content hashing, shared by every stage.

Every artifact skutag writes goes to a temporary name in the same directory and is
renamed into place, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def _file_mode() -> int:
    """The mode a plain `open(path, "w")` would give: 0o666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# Read once at import (os.umask is process-wide and not thread-safe to probe later).
_FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.fchmod(fd, _FILE_MODE)  # mkstemp creates 0600; artifacts must be readable like any other file
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)  # again: a writer that recreated the file (safetensors does) made it 0600
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse, in one line (InputError, exit 2), a local output folder that cannot be made or written:
    `-`, an existing file, a path under a file, a folder without write permission. Called before a
    command starts its work, so nothing is computed for an output that cannot be written."""
    from skutag.errors import InputError

    text = os.fspath(path)
    if text.strip() in ("", "-"):
        raise InputError(
            f"{option} {text!r}: name a folder (skutag writes files there, not to standard output)"
        )
    target = Path(text)
    if target.exists() and not target.is_dir():
        raise InputError(f"{option} {target}: that is a file; name a folder")
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option} {target}: {existing} is a file, so no folder can be made under it")
    try:  # a real probe: os.access says yes to root on a read-only file system
        with tempfile.TemporaryFile(dir=existing, prefix=".skutag-probe-"):
            pass
    except OSError as exc:
        raise InputError(f"{option} {target}: cannot write in {existing} ({exc.strerror or exc})") from None
