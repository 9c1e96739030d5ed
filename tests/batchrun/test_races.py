"""Races the bookkeeping must win, made deterministic: two newcomers taking one expired lease, a zombie
that passed `check()` and stalled past the time to live (its commit log and its part never land
over the newcomer's), a store that ignores `If-None-Match`.

Real parts: the lease, commit log and parts on local disk (the lock-file compare-and-swap, hard-link
creates) and on the test `moto_server` (S3 `If-Match` / `If-None-Match`), threads released by one
barrier or held by an event, and a fault proxy that strips the conditions."""

from __future__ import annotations

import json
import os
import threading
import time

import pyarrow as pa
import pytest
from skutag.batchrun.commit.lease import Lease
from skutag.batchrun.commit.out import CommitEntry, CommitLog, OutputNames
from skutag.batchrun.commit.parts import write_part
from skutag.batchrun.commit.reader import CommittedRows
from skutag.batchrun.plan.shard import Shard

from skutag import storage
from skutag.errors import LeaseHeld
from tests.batchrun.support import run_command, skutag_in


def entry(unit: int, rows: int = 0) -> CommitEntry:
    return CommitEntry.from_json({"unit": unit, "file": f"part-{unit:05d}.parquet", "rows": rows})


def expire(path) -> None:
    """Make a local lease look last written a minute ago (by the store's clock: its mtime)."""
    past = time.time() - 60
    os.utime(path, (past, past))


def race(count: int, action) -> list[object]:
    """Run `action(i)` in `count` threads released at once; each result or the exception it raised."""
    barrier, results = threading.Barrier(count), [None] * count

    def one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = action(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return results


def test_two_newcomers_taking_one_expired_lease_exactly_one_wins(tmp_path):
    uri = str(tmp_path / "_lease.json")
    for _round in range(20):
        old = Lease.acquire(uri, ttl_s=5)
        old._stop.set()  # the holder dies without releasing
        old._thread.join()
        expire(uri)
        results = race(2, lambda i: Lease.acquire(uri, ttl_s=5))
        won = [r for r in results if isinstance(r, Lease)]
        lost = [r for r in results if isinstance(r, LeaseHeld)]
        assert len(won) == 1 and len(lost) == 1, results
        assert json.loads((tmp_path / "_lease.json").read_text())["owner"] == won[0].owner
        won[0].check()
        won[0].release()
        assert not (tmp_path / "_lease.json").exists()


def test_a_zombie_that_passed_check_and_stalled_past_the_ttl_writes_nothing(tmp_path):
    out, names, key = str(tmp_path), OutputNames(Shard()), {"plan_id": "p", "model_sha256": "m"}
    uri = str(tmp_path / names.lease)
    zombie = Lease.acquire(uri, ttl_s=5)
    zombie_log = CommitLog(key, [entry(0, 10)])
    zombie_log.save(out, names)
    zombie.check()  # it holds the lease: about to commit unit 1...
    zombie._stop.set()  # ...and stalls (no renewal) past the time to live
    zombie._thread.join()
    expire(uri)
    newcomer = Lease.acquire(uri, ttl_s=5)  # takes the expired lease over
    newcomer_log = CommitLog(key)
    newcomer_log.save(out, names)  # keeps unit 0
    for unit in (1, 2):
        newcomer.check()
        newcomer_log.commit(entry(unit, 10))
        newcomer_log.save(out, names)
    # The zombie wakes and writes: its commit log write fails, its lease renewal fails, its release
    # leaves the newcomer's lease alone.
    zombie_log.commit(entry(1, 99))
    with pytest.raises(LeaseHeld, match="another process"):
        zombie_log.save(out, names)
    assert zombie_renews_nothing(zombie)
    with pytest.raises(LeaseHeld):
        zombie.check()
    zombie.release()
    stored = json.loads((tmp_path / names.commit_log).read_text())["parts"]
    assert [(p["unit"], p["rows"]) for p in stored] == [(0, 10), (1, 10), (2, 10)]  # no unit lost
    assert json.loads((tmp_path / names.lease).read_text())["owner"] == newcomer.owner
    newcomer.check()
    newcomer.release()


def zombie_renews_nothing(zombie: Lease) -> bool:
    """One renewal beat of the zombie, run directly: it must find its lease taken, not overwrite it."""
    zombie._stop.clear()
    zombie.ttl_s = 0.03  # a beat at once
    thread = threading.Thread(target=zombie._renew)
    thread.start()
    thread.join(5)
    zombie._stop.set()
    return zombie.lost is not None


def test_two_newcomers_on_s3_exactly_one_wins(s3):
    pytest.importorskip("s3fs")
    options = {"endpoint_url": s3.endpoint, "key": "testing", "secret": "testing"}
    uri = "s3://shop/race/_lease.json"
    for _round in range(5):
        old = Lease.acquire(uri, ttl_s=1, storage_options=options)
        old._stop.set()
        old._thread.join()
        time.sleep(2.1)  # expired by the store's clock (second resolution)
        results = race(2, lambda i: Lease.acquire(uri, ttl_s=1, storage_options=options))
        won = [r for r in results if isinstance(r, Lease)]
        assert len(won) == 1 and sum(isinstance(r, LeaseHeld) for r in results) == 1, results
        won[0]._stop.set()
        won[0]._thread.join()
        won[0].check()
        won[0].release()


def test_a_store_that_ignores_if_none_match_is_refused_at_start(s3, fault_proxy, tiny_model, six_images):
    fault_proxy.strip_conditions()
    result = skutag_in(
        fault_proxy.s3.env, *run_command(tiny_model, six_images, "--out", "s3://shop/nocas")[3:]
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not honour conditional writes" in lines[0], result.stderr
    assert fault_proxy.hits["strip_conditions"] >= 1
    assert s3.objects("shop", "nocas/") == {}


# -- a zombie's part -----------------------------------------------------------------------------


class Store:
    """OUT on local disk or on the module's moto_server, and how to expire a lease there."""

    def __init__(self, where: str, tmp_path, request):
        self.options, self.ttl = None, 5.0
        if where == "local":
            self.out = str(tmp_path / "out")
            os.makedirs(self.out)
        else:
            pytest.importorskip("s3fs")
            server = request.getfixturevalue("s3")
            self.options = {"endpoint_url": server.endpoint, "key": "testing", "secret": "testing"}
            self.out, self.ttl = f"s3://shop/zombie-{tmp_path.name}", 1.0

    def uri(self, name: str) -> str:
        return storage.join(self.out, name)

    def expire(self, name: str) -> None:
        if self.options is None:
            expire(self.uri(name))
        else:
            time.sleep(2.1)  # the store's clock has second resolution

    def read(self, name: str) -> bytes:
        return storage.read_bytes(self.uri(name), self.options)


def rows(who: str, n: int = 3) -> pa.Table:
    return pa.table({"id": [f"{who}-{i}" for i in range(n)], "who": [who] * n})


class Stalling:
    """A real lease whose `check()` passes and then stalls until `wake` is set: a zombie caught between
    its lease check and its next write, made deterministic."""

    def __init__(self, lease: Lease):
        self.lease, self.checked, self.wake, self.stall = lease, threading.Event(), threading.Event(), True

    def check(self) -> None:
        self.lease.check()
        if self.stall:
            self.stall = False
            self.checked.set()
            self.wake.wait(30)


KEY = {"plan_id": "p", "model_sha256": "m"}


def zombie_holding(store: Store, names: OutputNames) -> tuple[Lease, CommitLog]:
    """A holder that committed unit 0 and then stalls (no renewal from here on)."""
    zombie = Lease.acquire(store.uri(names.lease), ttl_s=store.ttl, storage_options=store.options)
    zombie._stop.set()
    zombie._thread.join()
    write_part(rows("zero"), store.uri("part-00000.parquet"), store.options, zombie)
    zombie_log = CommitLog(KEY, [entry(0, 3)])
    zombie_log.save(store.out, names, store.options)
    return zombie, zombie_log


def take_over(store: Store, names: OutputNames) -> tuple[Lease, CommitLog]:
    """A newcomer that takes the zombie's expired lease over and rewrites the log (keeping unit 0)."""
    store.expire(names.lease)
    newcomer = Lease.acquire(store.uri(names.lease), ttl_s=store.ttl, storage_options=store.options)
    newcomer._stop.set()
    newcomer._thread.join()
    newcomer_log = CommitLog(KEY)
    newcomer_log.save(store.out, names, store.options)
    return newcomer, newcomer_log


def newcomer_commits_unit_1(store: Store, names: OutputNames, newcomer: Lease, log: CommitLog) -> bytes:
    write_part(rows("newcomer"), store.uri("part-00001.parquet"), store.options, newcomer)
    log.commit(entry(1, 3))
    log.save(store.out, names, store.options)
    return store.read("part-00001.parquet")


def assert_reader_sees_the_newcomer(store: Store, newcomer_bytes: bytes) -> None:
    assert store.read("part-00001.parquet") == newcomer_bytes  # the zombie's bytes never replaced them
    committed = CommittedRows(store.out, store.options)
    assert sorted(committed.parts) == [0, 1]
    assert committed.read_unit(1).column("who").to_pylist() == ["newcomer"] * 3
    assert committed.read_unit(0).column("who").to_pylist() == ["zero"] * 3


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_zombies_late_part_never_replaces_the_newcomers(where, tmp_path, request):
    """The zombie passed `check()` for unit 1 and stalled before its part upload; the newcomer took the
    shard over and committed unit 1; the zombie wakes and uploads: its conditional create fails, and
    its lease check (before it would remove what is in the way) stops it."""
    store, names = Store(where, tmp_path, request), OutputNames(Shard())
    zombie, _zombie_log = zombie_holding(store, names)
    zombie.check()  # about to write unit 1's part... and stalls past the TTL
    newcomer, newcomer_log = take_over(store, names)
    newcomer_bytes = newcomer_commits_unit_1(store, names, newcomer, newcomer_log)
    with pytest.raises(LeaseHeld, match="lost the lease"):
        write_part(rows("zombie"), store.uri("part-00001.parquet"), store.options, zombie)
    assert_reader_sees_the_newcomer(store, newcomer_bytes)
    newcomer.release()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_zombies_part_that_landed_first_is_replaced_and_never_read(where, tmp_path, request):
    """The zombie's part of unit 1 landed before it stalled (its log entry never did): the newcomer
    replaces that part (the version it read, after its own lease check) and a reader sees its rows."""
    store, names = Store(where, tmp_path, request), OutputNames(Shard())
    zombie, zombie_log = zombie_holding(store, names)
    write_part(rows("zombie"), store.uri("part-00001.parquet"), store.options, zombie)
    zombie_bytes = store.read("part-00001.parquet")  # ...and the zombie stalls before its log save
    newcomer, newcomer_log = take_over(store, names)
    newcomer_bytes = newcomer_commits_unit_1(store, names, newcomer, newcomer_log)
    assert newcomer_bytes != zombie_bytes
    zombie_log.commit(entry(1, 3))
    with pytest.raises(LeaseHeld, match="another process"):
        zombie_log.save(store.out, names, store.options)
    assert_reader_sees_the_newcomer(store, newcomer_bytes)
    newcomer.release()


def test_a_zombie_that_read_a_stale_parts_version_then_stalled_removes_nothing(tmp_path, request):
    """The zombie found a leftover part in its way, read its version, passed its lease check and stalled
    before removing it; meanwhile the newcomer replaced the leftover and committed. The zombie's removal
    is conditioned on the version it read: nothing is removed, and its next try stops at the lease."""
    store, names = Store("local", tmp_path, request), OutputNames(Shard())
    part = store.uri("part-00001.parquet")
    write_part(rows("leftover"), part)  # a crashed attempt's part, in no log
    zombie, _zombie_log = zombie_holding(store, names)
    stalling = Stalling(zombie)
    outcome: list[BaseException | None] = []

    def zombie_writes() -> None:
        try:
            write_part(rows("zombie"), part, store.options, stalling)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=zombie_writes)
    thread.start()
    assert stalling.checked.wait(30)  # read the leftover's version, passed check(), stalled
    newcomer, newcomer_log = take_over(store, names)
    newcomer_bytes = newcomer_commits_unit_1(store, names, newcomer, newcomer_log)
    stalling.wake.set()
    thread.join(30)
    assert isinstance(outcome[0], LeaseHeld), outcome
    assert_reader_sees_the_newcomer(store, newcomer_bytes)
    newcomer.release()
