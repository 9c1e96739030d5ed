"""The ONE way to turn sources into inputs: directories, globs, lists, manifests and object-store prefixes.

Every stage that looks for images (batchrun's plan, the trainer's ImageFolder scan, the
exporter's calibration samples, the benchmarks) walks directories through `walk_images`,
so they agree on what an input is:

- image files by extension (case-insensitive, `skutag.images.IMAGE_EXTENSIONS`);
- hidden files and folders (`.name`, which includes AppleDouble `._x.jpg` and `.DS_Store`)
  are skipped and counted, never read;
- symbolic links are followed, but each real directory is entered once (device + inode),
  so a link to a parent neither multiplies inputs nor loops;
- a name that is not valid UTF-8 still gives an input (`skutag.entries`);
- a folder or prefix that cannot be listed (permission denied, vanished, a store that keeps
  failing) raises `ListingError` naming it (exit 75): a listing is complete or it fails, so
  no plan is ever made from part of a catalog.

An `Entry` carries what incremental runs compare: `size` and `version` (local: `size:mtime_ns`;
S3: the ETag; GCS: the generation; HTTP: the ETag, else `lm:` + Last-Modified). URLs named in a
list or manifest without a version are asked for one (a HEAD per URL, `VERSION_LOOKUPS` at a
time); a server that gives no validator leaves it None, and `--since` then compares sha256.
Listing streams: nothing here holds the whole catalog.
"""

from __future__ import annotations

import glob
import itertools
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from skutag import storage
from skutag.entries import Entry, entry_for_location, escape_name, local_path, local_uri, local_version
from skutag.errors import InputError, ListingError
from skutag.images import IMAGE_EXTENSIONS
from skutag.manifests import read_manifest_entries

__all__ = [
    "Entry",
    "ListingCounts",
    "entry_for_location",
    "escape_name",
    "list_sources",
    "local_path",
    "local_uri",
    "local_version",
    "walk_images",
]

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
GLOB_CHARS = frozenset("*?[")
VERSION_LOOKUPS = 16  # concurrent HEAD requests for list / manifest URLs without a version


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


def walk_images(root: str | os.PathLike, counts: ListingCounts | None = None) -> Iterator[Entry]:
    """Image files under `root`, recursively, in sorted order, with ids relative to `root`."""
    counts = counts if counts is not None else ListingCounts()
    root = os.fspath(root)
    seen: set[tuple[int, int]] = set()
    try:
        first = os.stat(root)
    except OSError as exc:
        raise ListingError(f"cannot list {_shown(root)}: {exc.strerror or exc}") from exc
    seen.add((first.st_dev, first.st_ino))
    yield from _walk(root, "", seen, counts)


def _walk(directory: str, prefix: str, seen: set[tuple[int, int]], counts: ListingCounts) -> Iterator[Entry]:
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:  # never an empty folder in silence: its inputs would vanish from the plan
        raise ListingError(f"cannot list {_shown(directory)}: {exc.strerror or exc}") from exc
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
            except OSError as exc:
                raise ListingError(f"cannot list {_shown(entry.path)}: {exc.strerror or exc}") from exc
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


def _shown(path: str) -> str:
    return os.fsencode(path).decode("utf-8", "backslashreplace")


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
            yield from with_versions(read_manifest_entries(source, storage_options), storage_options)
        else:
            yield from with_versions(_path_list(source), storage_options)
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


def _remote(prefix: str, counts: ListingCounts, storage_options: dict[str, str] | None) -> Iterator[Entry]:
    """An object-store prefix (or one object): each object's size and version from the listing alone."""
    lowered = prefix.lower()
    if has_image_extension(prefix):
        info = storage.info(prefix, storage_options)
        yield Entry(prefix.rsplit("/", 1)[-1], prefix, info.size, info.version)
        return
    if lowered.endswith(MANIFEST_SUFFIXES):
        yield from with_versions(read_manifest_entries(prefix, storage_options), storage_options)
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


def with_versions(entries: Iterable[Entry], storage_options: dict[str, Any] | None = None) -> Iterator[Entry]:
    """Entries in order, remote ones without a version given the one their store reports (HTTP
    ETag / Last-Modified, S3 ETag, GCS generation), `VERSION_LOOKUPS` lookups at a time. A lookup
    that fails leaves the version None: the input is then compared by sha256 (never reused blindly)."""
    it = iter(entries)
    with ThreadPoolExecutor(VERSION_LOOKUPS, thread_name_prefix="skutag-version") as pool:
        while chunk := list(itertools.islice(it, 64 * VERSION_LOOKUPS)):
            if any(e.version is None and storage.is_remote(e.uri) for e in chunk):
                yield from pool.map(lambda e: _versioned(e, storage_options), chunk)
            else:
                yield from chunk


def _versioned(entry: Entry, storage_options: dict[str, Any] | None) -> Entry:
    if entry.version is not None or not storage.is_remote(entry.uri):
        return entry
    found = storage.lookup(entry.uri, storage_options)
    if found is None:  # missing, denied, slow, no HEAD: the run reads it (an error row) or compares sha256
        return entry
    return replace(entry, size=entry.size if entry.size is not None else found.size, version=found.version)
