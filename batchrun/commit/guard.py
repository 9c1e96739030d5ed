"""Judge the store, not a handful of inputs: stop a run on a systemic fault or an outage.

Each failed read carries its storage-level cause, taken from the client's error code or HTTP
status (`skutag.retries.cause_of`): `denied`, `credentials`, `no_bucket`, `not_found`, or
`unavailable` (transient past the whole retry budget). `SystemicGuard` sees every decode
result before the writer does and decides two things:

- **A systemic fault (exit 4).** Expired credentials, a deleted bucket or a revoked policy
  make every input fail alike. Evidence about the store comes only from inputs the run knows
  nothing bad about: a task that retries an earlier error row of the same unchanged input
  (`--since`, `--retry-errors`) is a known-bad object and proves nothing, so a night whose
  only inputs to read are a few known-bad objects is a normal night with error rows. When
  the first `min(evidence, SAMPLE)` results all fail with a storage-level cause, the guard
  probes the store with objects the run knows exist (rows it copies as `ok` from the earlier
  run, in the same bucket or host): one that reads means the store works and the failures
  are per-file rows. Otherwise the run stops with `SystemicFault` naming the cause, before
  anything is published. Missing objects are per-file unless their bucket is gone.
- **An outage (exit 75).** `OUTAGE_STREAK` reads in a row from one store (bucket or host),
  each failing transiently for the whole retry budget with no success from that store
  between them, stop the run with `StoreUnavailable` naming the store: it does not grind
  through every input's budget, and nothing is published as complete. Committed parts stay;
  the rerun resumes. Known-bad objects count here neither: a host gone for good whose inputs
  failed on earlier nights costs their rows, not every later night.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from urllib.parse import urlsplit

import numpy as np

from skutag import retries
from skutag.errors import SystemicFault
from skutag.retries import CREDENTIALS, DENIED, NO_BUCKET, NOT_FOUND, UNAVAILABLE, StoreUnavailable

log = logging.getLogger(__name__)

SAMPLE = 16  # decode results of unknown inputs looked at before a run is judged healthy
OUTAGE_STREAK = 2  # reads in a row from one store that failed past the retry budget: an outage
PROBES = 4  # objects known to exist (reused ok rows) kept to probe the store with
CAUSE_NAMES = {
    NO_BUCKET: "missing bucket (NoSuchBucket)",
    CREDENTIALS: "invalid or expired credentials",
    DENIED: "access denied (403)",
    NOT_FOUND: "not found",
}
SYSTEMIC = frozenset(CAUSE_NAMES)


def store_of(uri: str) -> str:
    """The store an input lives in: `s3://bucket`, `https://host:port`; locally `local`."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "local"


def bucket_gone(store: str, storage_options: dict | None) -> bool:
    """Whether an object-store bucket no longer exists (S3 answers a HEAD of an object in a deleted
    bucket with a bare 404, like a missing object: only the bucket can tell). A store that cannot
    answer (unavailable) raises `StoreUnavailable`; any other failure says the bucket is there."""
    from skutag import storage

    if not store.startswith(("s3://", "s3a://", "gs://", "gcs://")):
        return False
    fs, bucket = storage.filesystem(store, storage_options), store.split("://", 1)[1]
    if store.startswith("s3"):  # fsspec's exists() says False for a store that answers 503: ask directly
        ask = lambda: fs.call_s3("head_bucket", Bucket=bucket)  # noqa: E731
    else:
        ask = lambda: fs.call("GET", "b/{}", bucket)  # noqa: E731
    try:
        retries.remote_call(ask, storage_options, store)
        return False
    except FileNotFoundError:
        return True
    except StoreUnavailable:
        raise
    except Exception as exc:  # denied on the bucket itself: it exists, or it is not ours to judge
        cause = retries.cause_of(exc)
        return cause in (NO_BUCKET, NOT_FOUND)


def probe(uris: Sequence[str], storage_options: dict | None) -> bool:
    """Whether one of `uris` (objects the run knows exist) reads: then the store works."""
    from skutag import storage

    for uri in uris:
        try:
            storage.read_object(uri, storage_options)
        except Exception as exc:
            log.info("probe of %s failed: %s", uri, retries.one_line(exc))
            continue
        return True
    return False


class SystemicGuard:
    """Sees every result (`observe`): raises `SystemicFault` (exit 4) or `StoreUnavailable` (exit 75)."""

    def __init__(
        self,
        task_uris: Sequence[str] | None = None,
        *,
        known_bad: np.ndarray | None = None,
        probes: Sequence[str] = (),
        sample: int = SAMPLE,
        storage_options: dict | None = None,
    ):
        self.uris = list(task_uris or [])
        tasks = len(self.uris)
        self.known_bad = np.zeros(tasks, bool) if known_bad is None else np.asarray(known_bad, bool)
        self.needed = min(int((~self.known_bad).sum()), sample)
        self.streak_needed = min(OUTAGE_STREAK, tasks) if tasks else OUTAGE_STREAK
        self.probes = list(probes)
        self.storage_options = storage_options
        self.causes: Counter[str] = Counter()
        self.example: str | None = None
        self.example_store: str | None = None
        self.streaks: Counter[str] = Counter()  # store -> reads in a row that failed past the budget
        self.decided = self.needed == 0

    def observe(
        self,
        indices: np.ndarray,
        ok: np.ndarray,
        causes: list[str | None] | None,
        messages: list[str | None],
    ) -> None:
        causes = causes if causes is not None else [None] * len(ok)
        for task, good, cause, message in zip(indices, ok, causes, messages, strict=True):
            store = store_of(self.uris[int(task)]) if int(task) < len(self.uris) else "local"
            if int(task) < len(self.known_bad) and self.known_bad[int(task)]:
                continue  # a known-bad object (a host gone for good, too) is news of nothing
            self._outage(store, bool(good), cause, message)
            if self.decided:
                continue
            if good or cause not in SYSTEMIC:
                self.decided = True  # a good row or a per-file fault: the store works
                continue
            self.causes[cause] += 1
            self.example = self.example or message
            self.example_store = self.example_store or store
            if sum(self.causes.values()) >= self.needed:
                self.stop()  # raises, unless the store proves to work

    def _outage(self, store: str, good: bool, cause: str | None, message: str | None) -> None:
        if cause != UNAVAILABLE:
            self.streaks[store] = 0
            return
        self.streaks[store] += 1
        if self.streaks[store] >= self.streak_needed:
            raise StoreUnavailable(
                f"stopped: {store} failed {self.streaks[store]} reads in a row for the whole retry budget "
                f"({retries.retry_budget(self.storage_options):g} s each), e.g. {message}; "
                "nothing was published as complete, retry later"
            )

    def finish(self) -> None:
        """At the end of a run smaller than the sample: judge what was seen."""
        if not self.decided and self.causes:
            self.stop()

    def stop(self) -> None:
        self.decided = True
        store = self.example_store or "local"
        if len(self.causes) > 1:
            self.causes.pop(NOT_FOUND, None)  # name the storage-level cause, not the missing objects
        if set(self.causes) == {NOT_FOUND}:
            if not bucket_gone(store, self.storage_options):
                return  # missing objects in a live bucket: per-file rows, the run goes on
            self.causes = Counter({NO_BUCKET: self.causes[NOT_FOUND]})
        same_store = [uri for uri in self.probes if store_of(uri) == store]
        if same_store and probe(same_store, self.storage_options):
            log.warning(
                "the first %d input(s) failed to read, but %s serves objects this run knows: per-file rows",
                sum(self.causes.values()), store,
            )  # fmt: skip
            return
        cause, count = self.causes.most_common(1)[0]
        seen = sum(self.causes.values())
        raise SystemicFault(
            f"stopped: the first {seen} input(s) all failed to read, {CAUSE_NAMES[cause]} ({count} of them), "
            f"e.g. {self.example}; nothing was published, fix access and rerun"
        )
