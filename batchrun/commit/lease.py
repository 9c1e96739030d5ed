"""One live process per shard: a lease object `OUT/_lease[.TAG].json`, renewed while the shard runs.

Every write of the lease is a compare-and-swap on the object's version (`conditional.write_if`:
S3 `If-None-Match: *` / `If-Match: ETAG`, locally under a lock file): `acquire` creates it
only if absent; when it exists and its holder renewed it within its time to live, another
process runs this shard and the run refuses in one line with exit 75 (EX_TEMPFAIL). Expiry
is judged by one clock, the store's: the lease object's age (S3: the `Date` of the reply
minus its `Last-Modified`; locally now minus its mtime), never one host's time against
another's. An expired lease is taken over by a write conditioned on the version that was
read: of two newcomers exactly one wins. A lease whose holder ran on this very machine, in
this pid namespace, and whose process is gone counts as expired at once. Renewal (every
third of the time to live) is conditioned on the version this process last wrote, so a
holder that stalled past the expiry never overwrites a newcomer's lease: it finds it lost,
and `check` (before every commit) raises `LeaseHeld`. `release` removes it only if it is
still this process's version. Before the first lease on a store, `conditional.check_exclusive`
proves that the store honours conditional creates (exit 2 otherwise).

The time to live is `--lease-ttl` (default 120 s; tests set a few seconds).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from skutag import conditional
from skutag.errors import LeaseHeld

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 120.0


class Lease:
    """A held lease on one shard of OUT; use `acquire`, then `check` before commits, then `release`."""

    def __init__(self, uri: str, ttl_s: float, storage_options: dict[str, Any] | None = None):
        self.uri, self.ttl_s, self.storage_options = uri, ttl_s, storage_options
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.host = _host_identity()
        self.lost: str | None = None
        self.version: str | None = None  # the lease object's version this process last wrote
        self._lock = threading.Lock()  # renewal and check never interleave
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def acquire(
        cls, uri: str, ttl_s: float = DEFAULT_TTL_S, storage_options: dict[str, Any] | None = None
    ) -> Lease:
        """Take the lease or raise `LeaseHeld` (exit 75) naming its live holder; starts the renewal thread."""
        conditional.check_exclusive(uri.rsplit("/", 1)[0], storage_options)
        lease = cls(uri, ttl_s, storage_options)
        for _attempt in range(3):
            lease.version = conditional.write_if(uri, lease._body(), None, storage_options)
            if lease.version is not None:
                break
            held = conditional.read_versioned(uri, storage_options)
            if held is None:
                continue  # released between the two calls: try to create it again
            holder = _parse(held.data)
            ttl = float(holder.get("ttl_s") or ttl_s)
            if held.age_s < ttl and not _dead_here(holder):
                left = ttl - held.age_s
                raise LeaseHeld(
                    f"{uri} is held by {holder.get('owner')} for up to {left:.0f} s more: another process "
                    "runs this shard; retry after it ends or its lease expires (--lease-ttl)"
                )
            log.warning("taking over the expired lease %s of %s", uri, holder.get("owner"))
            lease.version = conditional.write_if(uri, lease._body(), held.version, storage_options)
            if lease.version is None:
                raise LeaseHeld(
                    f"{uri}: another process took over this shard's expired lease first; retry later"
                )
            break
        else:
            raise LeaseHeld(f"{uri}: the lease changed on every try; retry later")
        lease._thread = threading.Thread(target=lease._renew, name="batchrun-lease", daemon=True)
        lease._thread.start()
        return lease

    def check(self) -> None:
        """Raise `LeaseHeld` when this process no longer holds the lease (it must not commit).

        Reads the lease's version (one small read per commit): a process that was stopped past the
        expiry learns at once that another took over, not at its renewal thread's next beat."""
        with self._lock:
            if not self.lost:
                held = conditional.read_versioned(self.uri, self.storage_options)
                if held is None or held.version != self.version:
                    holder = _parse(held.data) if held is not None else {}
                    self.lost = f"lost the lease {self.uri} to {holder.get('owner', 'nobody')}"
        if self.lost:
            raise LeaseHeld(f"stopped: {self.lost}; the shard's committed parts are kept, rerun to resume")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            if not self.lost and self.version is not None:
                conditional.remove_if(self.uri, self.version, self.storage_options)

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                with self._lock:
                    if self.lost:
                        return
                    version = conditional.write_if(self.uri, self._body(), self.version, self.storage_options)
                    if version is None:  # another process took it over: never overwrite its lease
                        self.lost = f"lost the lease {self.uri} (another process took it over)"
                        log.warning(self.lost)
                        return
                    self.version = version
            except Exception as exc:  # a store hiccup: try again at the next beat, before it expires
                log.warning("could not renew the lease %s: %s", self.uri, exc)

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "owner": self.owner,
                "pid": os.getpid(),
                "host": self.host,
                "acquired_at": now,
                "expires_at": now + self.ttl_s,
                "ttl_s": self.ttl_s,
            }  # fmt: skip
        ).encode()


def _parse(data: bytes) -> dict[str, Any]:
    try:
        found = json.loads(data)
    except ValueError:  # a torn or foreign file: treat as expired
        return {}
    return found if isinstance(found, dict) else {}


def _host_identity() -> str:
    """This machine's boot and pid namespace: pids compare only where both are equal."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}:{os.readlink('/proc/self/ns/pid')}"
    except OSError:  # not Linux: never judge another process dead from here
        return ""


def _dead_here(holder: dict[str, Any]) -> bool:
    """Whether the lease's holder ran here (same boot and pid namespace) and its process is gone."""
    here = _host_identity()
    if not here or holder.get("host") != here or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
