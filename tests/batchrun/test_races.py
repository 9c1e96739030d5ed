"""Races the bookkeeping must win, made deterministic: two newcomers taking one expired lease, a zombie
that passed `check()` and stalled past the time to live, a store that ignores `If-None-Match`.

Real parts: the lease and commit log on local disk (the lock-file compare-and-swap) and on the test
`moto_server` (S3 `If-Match` / `If-None-Match`), threads released by one barrier, and a fault proxy
that strips the conditions."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from skutag.batchrun.commit.lease import Lease
from skutag.batchrun.commit.out import CommitEntry, CommitLog, OutputNames
from skutag.batchrun.plan.shard import Shard

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
