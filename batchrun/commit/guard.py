"""Fail fast on systemic faults: when a run's first inputs all fail with a storage-level cause, stop.

Expired credentials, a deleted bucket or a revoked policy make every input `unreadable`;
publishing a night of such rows as a complete run is worse than stopping. `SystemicGuard`
looks at the first `SAMPLE` decode results of a run (in the order they arrive, either
engine) before the writer sees them: one good row, or one failure that is not
storage-level (a corrupt file, a missing object), settles it and the run goes on, every
failure a row as usual. If all of them fail with a storage-level cause the run stops with
`SystemicFault` (exit 4) naming the cause, before any part is committed. Per-file faults
(one 403 among many good files) stay rows. Objects that are not found are per-file too,
unless their bucket is gone (S3 answers a HEAD in a deleted bucket with a bare 404, like a
missing object: the guard then asks whether the bucket exists).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from skutag.errors import SystemicFault

SAMPLE = 16  # decode results looked at before a run is judged healthy
# (pattern over an `unreadable` row's message, the cause it names); first match wins.
CAUSES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), cause)
    for pattern, cause in (
        (r"NoSuchBucket|specified bucket does not exist", "missing bucket (NoSuchBucket)"),
        (r"ExpiredToken|RequestExpired|token has expired", "expired credentials (ExpiredToken)"),
        (
            r"InvalidAccessKeyId|SignatureDoesNotMatch|InvalidToken|Unable to locate credentials|"
            r"NoCredentials|Access Key Id you provided",
            "invalid credentials (InvalidAccessKeyId)",
        ),
        (
            r"AccessDenied|Access Denied|Forbidden|\b403\b|PermissionError|Permission denied",
            "access denied (403)",
        ),
    )
)


NOT_FOUND = "not found"  # a missing object is per-file, unless its whole bucket is gone
_NOT_FOUND = re.compile(r"FileNotFoundError|NoSuchKey|\b404\b|Not Found", re.IGNORECASE)
_BUCKET = re.compile(r"cannot read ((?:s3|s3a|gs|gcs)://[^/\s:]+)")


def storage_cause(kind: str | None, message: str | None) -> str | None:
    """The storage-level cause of an error row (`NOT_FOUND` for a missing remote object), or None."""
    if kind != "unreadable" or not message:
        return None
    for pattern, cause in CAUSES:
        if pattern.search(message):
            return cause
    if _BUCKET.search(message) and _NOT_FOUND.search(message):
        return NOT_FOUND
    return None


def bucket_gone(message: str, storage_options: dict | None) -> bool:
    """Whether the bucket named in an `unreadable` message no longer exists (S3 answers a HEAD of an
    object in a deleted bucket with a bare 404, like a missing object: only the bucket can tell)."""
    from skutag import storage

    found = _BUCKET.search(message)
    if found is None:
        return False
    try:
        return not storage.exists(found.group(1), storage_options)
    except Exception:  # cannot tell: not a reason to stop the run
        return False


class SystemicGuard:
    """Judges the first `sample` results of a run; `observe` raises `SystemicFault` when all failed alike."""

    def __init__(self, tasks: int, sample: int = SAMPLE, storage_options: dict | None = None):
        self.needed = min(tasks, sample)
        self.storage_options = storage_options
        self.causes: Counter[str] = Counter()
        self.example: str | None = None
        self.decided = self.needed == 0

    def observe(self, ok: np.ndarray, kinds: list[str | None], messages: list[str | None]) -> None:
        for good, kind, message in zip(ok, kinds, messages, strict=True):
            if self.decided:
                return
            cause = None if good else storage_cause(kind, message)
            if cause is None:
                self.decided = True  # a good row or a per-file fault: the store works
                return
            self.causes[cause] += 1
            self.example = self.example or message
            if sum(self.causes.values()) >= self.needed:
                self.stop()  # raises, unless the failures turn out to be per-file

    def finish(self) -> None:
        """At the end of a run smaller than the sample: stop if every result so far failed at storage level."""
        if not self.decided and self.causes:
            self.stop()

    def stop(self) -> None:
        self.decided = True
        if len(self.causes) > 1:
            self.causes.pop(NOT_FOUND, None)  # name the storage-level cause, not the missing objects
        if set(self.causes) == {NOT_FOUND}:
            if not bucket_gone(self.example or "", self.storage_options):
                return  # missing objects in a live bucket: per-file rows, the run goes on
            self.causes = Counter({"missing bucket (NoSuchBucket)": self.causes[NOT_FOUND]})
        cause, count = self.causes.most_common(1)[0]
        seen = sum(self.causes.values())
        raise SystemicFault(
            f"stopped: the first {seen} input(s) all failed to read, {cause} ({count} of them), e.g. "
            f"{self.example}; nothing was published, fix access and rerun"
        )
