"""One live process per shard: a lease object `OUT/_lease[.TAG].json`, renewed while the shard runs.

`Lease.acquire` creates the object exclusively (`storage.create_exclusive`: a conditional
PUT on object storage, a hard link locally). When it exists and has not expired, another
process runs this shard: the run refuses in one line with exit 75 (EX_TEMPFAIL), which an
orchestrator retries later. An expired lease (its holder died or stalled past the expiry)
is removed and created again by the newcomer, which then reads it back to be sure it won.
A lease whose holder ran on this very machine, in this pid namespace (same boot id and
namespace), and whose process is gone counts as expired at once: a rerun after a crash or
SIGKILL on one host does not wait out the expiry. Another pod or host always waits.
A thread renews the lease every third of its time to live; a holder that finds its lease
gone or taken (it stalled longer than the expiry and another process took over) stops
committing (`check` raises `LeaseHeld`). `release` removes it when the run ends.

The time to live is `--lease-ttl` (default 120 s; tests set a few seconds). A takeover has a
window of one read: two newcomers that both saw the same expired lease both delete it, and
the read-back makes the loser stop.
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

from skutag import storage
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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def acquire(
        cls, uri: str, ttl_s: float = DEFAULT_TTL_S, storage_options: dict[str, Any] | None = None
    ) -> Lease:
        """Take the lease or raise `LeaseHeld` (exit 75) naming its live holder; starts the renewal thread."""
        lease = cls(uri, ttl_s, storage_options)
        if not storage.create_exclusive(uri, lease._body(), storage_options):
            holder = lease._read()
            if holder is not None and holder.get("expires_at", 0) > time.time() and not _dead_here(holder):
                raise LeaseHeld(
                    f"{uri} is held by {holder.get('owner')} until "
                    f"{time.strftime('%H:%M:%S', time.gmtime(holder['expires_at']))} UTC: another process "
                    f"runs this shard; retry after it ends or its lease expires (--lease-ttl)"
                )
            log.warning("taking over the expired lease %s of %s", uri, (holder or {}).get("owner"))
            storage.remove(uri, storage_options)
            if not storage.create_exclusive(uri, lease._body(), storage_options):
                raise LeaseHeld(
                    f"{uri}: another process took over this shard's expired lease first; retry later"
                )
        if (lease._read() or {}).get("owner") != lease.owner:
            raise LeaseHeld(
                f"{uri}: another process took over this shard's lease at the same moment; retry later"
            )
        lease._thread = threading.Thread(target=lease._renew, name="batchrun-lease", daemon=True)
        lease._thread.start()
        return lease

    def check(self) -> None:
        """Raise `LeaseHeld` when this process no longer holds the lease (it must not commit).

        Reads the lease (one small GET per commit): a process that was stopped past the expiry
        learns at once that another took over, not at its renewal thread's next beat."""
        if not self.lost:
            holder = self._read()
            if holder is None or holder.get("owner") != self.owner:
                self.lost = f"lost the lease {self.uri} to {(holder or {}).get('owner', 'nobody')}"
        if self.lost:
            raise LeaseHeld(f"stopped: {self.lost}; the shard's committed parts are kept, rerun to resume")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if not self.lost and (self._read() or {}).get("owner") == self.owner:
            storage.remove(self.uri, self.storage_options)

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                holder = self._read()
                if holder is None or holder.get("owner") != self.owner:
                    self.lost = f"lost the lease {self.uri} to {(holder or {}).get('owner', 'nobody')}"
                    log.warning(self.lost)
                    return
                storage.write_bytes(self.uri, self._body(), self.storage_options)
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

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(storage.read_bytes(self.uri, self.storage_options))
        except FileNotFoundError:
            return None
        except ValueError:  # a torn or foreign file: treat as expired
            return {}


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
