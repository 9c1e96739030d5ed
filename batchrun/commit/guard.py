"""Fail fast on systemic faults: when a run's first inputs all fail with a storage-level cause, stop.

Expired credentials, a deleted bucket or a revoked policy make every input `unreadable`;
publishing a night of such rows as a complete run is worse than stopping. `SystemicGuard`
looks at the first `SAMPLE` decode results of a run (in the order they arrive, either
engine) before the writer sees them: one good row, or one failure that is not
storage-level (a corrupt file, a missing object), settles it and the run goes on, every
failure a row as usual. If all of them fail with a storage-level cause the run stops with
`SystemicFault` (exit 4) naming the cause, before any part is committed. Per-file faults
(one 403 among many good files) stay rows.
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


def storage_cause(kind: str | None, message: str | None) -> str | None:
    """The storage-level cause of an error row, or None for a per-file fault."""
    if kind != "unreadable" or not message:
        return None
    for pattern, cause in CAUSES:
        if pattern.search(message):
            return cause
    return None


class SystemicGuard:
    """Judges the first `sample` results of a run; `observe` raises `SystemicFault` when all failed alike."""

    def __init__(self, tasks: int, sample: int = SAMPLE):
        self.needed = min(tasks, sample)
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
                self.stop()

    def finish(self) -> None:
        """At the end of a run smaller than the sample: stop if every result so far failed alike."""
        if not self.decided and self.causes:
            self.stop()

    def stop(self) -> None:
        self.decided = True
        cause, count = self.causes.most_common(1)[0]
        seen = sum(self.causes.values())
        raise SystemicFault(
            f"stopped: the first {seen} input(s) all failed to read, {cause} ({count} of them), e.g. "
            f"{self.example}; nothing was published, fix access and rerun"
        )
