"""The ONE way to turn sources into inputs: directories, globs, lists, manifests and object-store prefixes.

Every stage that looks for images (batchrun's plan, the trainer's ImageFolder scan, the
exporter's calibration samples, the benchmarks) walks directories through `walk_images`,
so they agree on what an input is:

- image files by extension (case-insensitive, `skutag.images.IMAGE_EXTENSIONS`);
- hidden files and folders (`.name`, which includes AppleDouble `._x.jpg` and `.DS_Store`)
  are skipped and counted, never read;
- symbolic links are followed, but each real directory is entered once (device + inode),
  so a link to a parent neither multiplies inputs nor loops;
- a name that is not valid UTF-8 (`caf\\xe9.jpg` from an old NFS/SMB share) still gives an
  input: its `id` escapes the bad bytes as `%XX` and its `uri` is a `file://` URL whose
  percent-escapes decode (`urllib.parse.unquote_to_bytes`) to the exact bytes on disk.

An `Entry` carries what incremental runs compare: `size` and `version` (local: `size:mtime_ns`;
S3: the ETag; GCS: the generation). Listing streams: nothing here holds the whole catalog.
"""

from __future__ import annotations

import glob
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

from skutag import storage
from skutag.errors import InputError
from skutag.images import IMAGE_EXTENSIONS

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
GLOB_CHARS = frozenset("*?[")
# Every printable ASCII character but `%` stays as it is in an escaped id or file:// URL.
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%") + " "


@dataclass(frozen=True, slots=True)
class Entry:
    """One input: its identity, where to read it, and what incremental runs compare."""

    id: str
    uri: str
    size: int | None = None
    version: str | None = None
    label: str | None = None  # a manifest's `label` column: what the catalog says the image is


@dataclass
class ListingCounts:
    """What a listing saw but did not turn into inputs."""

    hidden: int = 0  # dotfiles and dot-folders' files, AppleDouble `._*` included
    not_image: int = 0  # files without an image extension
    revisited_dirs: int = 0  # directories reached again through a symlink (loops, duplicates)
    broken_links: int = 0  # symlinks to nothing: still inputs (an `unreadable` row), counted here
    by_source: dict[str, int] = field(default_factory=dict)

    def add(self, other: ListingCounts) -> None:
        self.hidden += other.hidden
        self.not_image += other.not_image
        self.revisited_dirs += other.revisited_dirs
        self.broken_links += other.broken_links

    def to_dict(self) -> dict[str, int]:
        return {
            "hidden": self.hidden,
            "not_image": self.not_image,
            "revisited_dirs": self.revisited_dirs,
            "broken_links": self.broken_links,
        }


def is_hidden(name: str) -> bool:
    """Dotfiles, AppleDouble `._x.jpg`, `.DS_Store`, `.Trash-1000/`: never inputs in any stage."""
    return name.startswith(".")


def has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def escape_name(text: str) -> str:
    """Valid UTF-8 stays as it is; a name with undecodable bytes is percent-escaped whole (`%` too)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return quote(os.fsencode(text), safe=_SAFE)


def local_uri(path: str) -> str:
    """An absolute path, or a `file://` URL when the path has bytes that are not UTF-8."""
    path = os.path.abspath(path)
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return "file://" + quote(os.fsencode(path), safe=_SAFE)


def local_path(uri: str) -> str | bytes:
    """The inverse of `local_uri`: what `open()` takes (bytes for a non-UTF-8 `file://` URL)."""
    if uri.startswith("file://"):
        raw = unquote_to_bytes(uri[len("file://") :])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
    return uri


def local_version(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}"


def walk_images(root: str | os.PathLike, counts: ListingCounts | None = None) -> Iterator[Entry]:
    """Image files under `root`, recursively, in sorted order, with ids relative to `root`."""
    counts = counts if counts is not None else ListingCounts()
    root = os.fspath(root)
    seen: set[tuple[int, int]] = set()
    first = os.stat(root)
    seen.add((first.st_dev, first.st_ino))
    yield from _walk(root, "", seen, counts)


def _walk(directory: str, prefix: str, seen: set[tuple[int, int]], counts: ListingCounts) -> Iterator[Entry]:
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return  # an unreadable folder has no inputs we could name
    for entry in entries:
        name = entry.name
        if is_hidden(name):
            counts.hidden += 1
            continue
        relative = prefix + escape_name(name)
        try:
            is_dir = entry.is_dir()  # follows symlinks
        except OSError:
            is_dir = False
        if is_dir:
            try:
                st = entry.stat()
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                counts.revisited_dirs += 1
                continue
            seen.add(key)
            yield from _walk(entry.path, relative + "/", seen, counts)
            continue
        if not has_image_extension(name):
            counts.not_image += 1
            continue
        try:
            st = entry.stat()
        except OSError:  # a broken symlink: an input that will get an `unreadable` row
            counts.broken_links += 1
            yield Entry(relative, local_uri(entry.path))
            continue
        if stat.S_ISREG(st.st_mode):
            yield Entry(relative, local_uri(entry.path), st.st_size, local_version(st))
        else:
            counts.not_image += 1  # a FIFO or device named .jpg is never opened


def list_sources(
    sources: Sequence[str | os.PathLike],
    counts: ListingCounts | None = None,
    storage_options: dict[str, str] | None = None,
) -> Iterator[Entry]:
    """Every input of every source, source by source (NOT globally sorted; the plan sorts)."""
    if not sources:
        raise InputError("no SOURCE given")
    counts = counts if counts is not None else ListingCounts()
    for source in sources:
        yield from list_source(os.fspath(source), counts, storage_options)


def list_source(
    source: str, counts: ListingCounts, storage_options: dict[str, str] | None = None
) -> Iterator[Entry]:
    """One SOURCE: a directory or prefix, an image, a glob, a list of paths, or a manifest."""
    if storage.is_remote(source):
        yield from _remote(source, counts, storage_options)
        return
    if source.startswith("file://"):
        source = os.fsdecode(local_path(source))
    if os.path.isdir(source):
        yield from walk_images(source, counts)
    elif os.path.isfile(source):
        lowered = source.lower()
        if has_image_extension(source):
            st = os.stat(source)
            yield Entry(
                escape_name(os.path.basename(source)), local_uri(source), st.st_size, local_version(st)
            )
        elif lowered.endswith(MANIFEST_SUFFIXES):
            from skutag.manifests import read_manifest_entries

            yield from read_manifest_entries(source, storage_options)
        else:
            yield from _path_list(source)
    elif GLOB_CHARS & set(source):
        yield from _glob(source)
    else:
        raise InputError(f"source not found: {source}")


def _glob(pattern: str) -> Iterator[Entry]:
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if GLOB_CHARS & set(part)), len(parts))
    root = os.path.join(*parts[:fixed]) if fixed else "."
    found = False
    for match in sorted(glob.iglob(pattern, recursive=True)):
        try:
            st = os.stat(match)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        found = True
        relative = Path(os.path.relpath(match, root)).as_posix()
        yield Entry(escape_name(relative), local_uri(match), st.st_size, local_version(st))
    if not found:
        raise InputError(f"source pattern matches no files: {pattern}")


def _path_list(path: str) -> Iterator[Entry]:
    """A text file of paths or URLs, one per line (`#` comments); relative paths are relative to it."""
    base = os.path.dirname(os.path.abspath(path))
    try:
        handle = open(path, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise InputError(f"cannot read the list of paths {path}: {exc.strerror or exc}") from exc
    with handle:
        for line in handle:
            item = line.strip()
            if not item or item.startswith("#"):
                continue
            yield entry_for_location(escape_name(item), item, base)


def entry_for_location(input_id: str, location: str, base: str) -> Entry:
    """An Entry for a path or URL named in a list or manifest (relative paths from `base`)."""
    if storage.is_remote(location):
        return Entry(input_id, location)
    if location.startswith("file://"):
        path = local_path(location)
    elif re.match(r"[A-Za-z][A-Za-z0-9+.-]+://", location):
        raise InputError(
            f"unsupported URL scheme in {location!r} (use a path, file://, s3://, gs://, https://)"
        )
    else:
        path = os.path.join(base, location)
    path = os.fsdecode(path)
    try:
        st = os.stat(path)
    except OSError:
        return Entry(input_id, local_uri(path))  # an `unreadable` row when it is run
    return Entry(input_id, local_uri(path), st.st_size, local_version(st))


def _remote(prefix: str, counts: ListingCounts, storage_options: dict[str, str] | None) -> Iterator[Entry]:
    """An object-store prefix (or one object): each object's size and version from the listing alone."""
    lowered = prefix.lower()
    if has_image_extension(prefix):
        info = storage.info(prefix, storage_options)
        yield Entry(prefix.rsplit("/", 1)[-1], prefix, info.size, info.version)
        return
    if lowered.endswith(MANIFEST_SUFFIXES):
        from skutag.manifests import read_manifest_entries

        yield from read_manifest_entries(prefix, storage_options)
        return
    found = False
    for obj in storage.walk_objects(prefix, storage_options):
        relative = obj.uri[len(prefix.rstrip("/")) + 1 :]
        if any(is_hidden(part) for part in relative.split("/")):
            counts.hidden += 1
        elif not has_image_extension(relative):
            counts.not_image += 1
        else:
            found = True
            yield Entry(relative, obj.uri, obj.size, obj.version)
    if not found and not storage.exists(prefix, storage_options):
        raise InputError(f"source not found: {prefix}")
