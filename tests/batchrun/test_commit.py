"""Commit by task id, the shard lease, completion a reader can trust, OUT's control files, the Arrow helpers.

Real parts throughout: the real supervised DataLoader and watchdog (the race made
deterministic by a dataset that makes the watchdog kill a worker for a task it has already
delivered), real `skutag run` processes competing for one shard, real Parquet parts.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from skutag.batchrun import arrow
from skutag.batchrun.api import RunSummary, run_catalog
from skutag.batchrun.commit.out import CommitEntry, CommitLog, OutputNames, prepare_out, remove_run
from skutag.batchrun.commit.reader import CommittedRows
from skutag.batchrun.decode.loader import TaskDataset, _worker_id
from skutag.batchrun.options import RunOptions
from skutag.batchrun.plan.catalog import make_plan
from skutag.batchrun.plan.shard import Shard

from skutag.errors import InputError
from tests.batchrun.support import committed_rows

COLUMNS = ["id", "status", "error_kind", "label_index", "score", "sha256"]


@pytest.fixture(scope="module")
def clean(tiny_model, six_images, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("clean") / "out"
    run_catalog(tiny_model, [str(six_images)], out, RunOptions(batch_size=2, workers=1, max_error_rate=1.0))
    return committed_rows(out, COLUMNS)


class RacingDataset(TaskDataset):
    """The watchdog race, deterministic: when the worker starts task 2 (batch [0, 1] is already on
    its way to the main process), it makes its slot say "task 1, started long ago" and hangs.
    The watchdog then kills it for task 1, a task it has delivered: the supervisor adds a
    `timeout` row for task 1, which the writer receives after task 1's real result. Only the
    first attempt races (a marker file); the respawned workers decode normally."""

    marker = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.marker = RacingDataset.marker

    def __getitem__(self, task: int):
        if task == 2 and not os.path.exists(self.marker):
            Path(self.marker).write_text("raced")
            worker = _worker_id()
            self.slots.begin(worker, 1)
            self.slots.started[worker] = time.monotonic() - 10_000.0
            time.sleep(120)
        return super().__getitem__(task)


def test_a_task_delivered_twice_commits_once_on_its_own_id(
    tiny_model, six_images, clean, tmp_path, monkeypatch
):
    import skutag.batchrun.engines.local as local

    RacingDataset.marker = str(tmp_path / "raced")
    monkeypatch.setattr(local, "TaskDataset", RacingDataset)
    out = tmp_path / "out"
    options = RunOptions(batch_size=2, workers=1, decode_timeout_s=30.0, max_error_rate=1.0)
    summary = run_catalog(tiny_model, [str(six_images)], out, options)
    assert Path(RacingDataset.marker).exists()  # the race happened
    assert summary.repeats == 1 and summary.worker_restarts == 1
    assert summary.rows == 6 and summary.ok == 6  # the first delivery (the real result) won
    assert committed_rows(out, COLUMNS) == clean  # every prediction on its own id
    monkeypatch.undo()
    again = run_catalog(tiny_model, [str(six_images)], out, options)
    assert again.already_complete and committed_rows(out, COLUMNS) == clean


def entry(unit: int, rows: int = 0) -> CommitEntry:
    return CommitEntry.from_json({"unit": unit, "file": f"part-{unit:05d}.parquet", "rows": rows})


def test_commit_log_never_goes_backwards_and_a_zombie_log_never_lands(tmp_path):
    """Saves race in threads: each is a compare-and-swap on the stored log's version."""
    import threading

    from skutag.errors import LeaseHeld

    names, out, key = OutputNames(Shard()), str(tmp_path), {"plan_id": "p", "model_sha256": "m"}
    # Two first saves at the same moment (a takeover): one wins, the other merges and lands after it.
    for round_ in range(10):
        base = round_ * 10
        logs = [CommitLog(key, [entry(base + 1)]), CommitLog(key, [entry(base + 2)])]
        barrier = threading.Barrier(2)

        def first_save(log: CommitLog, barrier: threading.Barrier) -> None:
            barrier.wait()
            log.save(out, names)

        threads = [threading.Thread(target=first_save, args=(log, barrier)) for log in logs]
        [t.start() for t in threads]
        [t.join() for t in threads]
        stored = {p["unit"] for p in json.loads((tmp_path / names.commit_log).read_text())["parts"]}
        assert {base + 1, base + 2} <= stored
    before = {p["unit"] for p in json.loads((tmp_path / names.commit_log).read_text())["parts"]}
    # A zombie keeps saving while the newcomer that took the shard over commits units: not one of the
    # zombie's saves lands after the newcomer's first, and no unit of the newcomer is lost.
    zombie = CommitLog(key, [entry(500)])
    zombie.save(out, names)
    newcomer = CommitLog(key)
    newcomer.save(out, names)  # takes the shard over: keeps every unit stored so far
    stopped, barrier = [], threading.Barrier(2)

    def newcomer_commits() -> None:
        barrier.wait()
        for unit in range(200, 240):
            newcomer.commit(entry(unit))
            newcomer.save(out, names)

    def zombie_commits() -> None:
        barrier.wait()
        for unit in range(300, 340):
            zombie.commit(entry(unit))
            try:
                zombie.save(out, names)
            except LeaseHeld:
                stopped.append(unit)
                return

    threads = [threading.Thread(target=newcomer_commits), threading.Thread(target=zombie_commits)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    stored = {p["unit"] for p in json.loads((tmp_path / names.commit_log).read_text())["parts"]}
    assert stopped == [300]  # its very first save after the takeover failed
    assert stored == before | {500} | set(range(200, 240))
    other_run = CommitLog({**key, "plan_id": "q"}, [])
    other_run.save(out, names)  # a different run (e.g. --overwrite) does not inherit units
    assert json.loads((tmp_path / names.commit_log).read_text())["parts"] == []


def test_sharded_run_gets_one_global_success_from_the_last_shard_and_index_reads_committed_parts(
    tiny_model, six_images, clean, tmp_path
):
    out = tmp_path / "out"
    common = dict(batch_size=2, workers=1, part_rows=2, max_error_rate=1.0)
    first = run_catalog(tiny_model, [str(six_images)], out, RunOptions(shard=Shard(0, 2), **common))
    assert (
        not first.complete and not (out / "_SUCCESS").exists() and (out / "_SUCCESS.s0000-of-0002").exists()
    )
    stray = out / "part-00009.parquet"  # a part no commit log lists (a crashed attempt's leftover)
    pq.write_table(pq.read_table(out / "part-00000.parquet"), stray)
    second = run_catalog(tiny_model, [str(six_images)], out, RunOptions(shard=Shard(1, 2), **common))
    assert second.complete and (out / "_SUCCESS").exists()
    assert committed_rows(out, COLUMNS) == clean  # the reader never reads the stray part
    assert str(stray) not in CommittedRows(str(out)).uris()


def test_rerun_of_a_finished_out_whose_summary_has_unknown_fields(tiny_model, six_images, tmp_path):
    out = tmp_path / "out"
    options = RunOptions(batch_size=2, workers=1, max_error_rate=1.0)
    run_catalog(tiny_model, [str(six_images)], out, options)
    summary = json.loads((out / "_summary.json").read_text())
    summary["field_of_a_later_version"] = {"x": 1}
    del summary["decode"]  # and one an earlier version did not write
    (out / "_summary.json").write_text(json.dumps(summary))
    again = run_catalog(tiny_model, [str(six_images)], out, options)
    assert again.already_complete and again.rows == 6 and again.decode is None
    assert isinstance(RunSummary.from_dict(summary), RunSummary)


def test_remove_run_takes_the_plan_away_first(tiny_model, six_images, tmp_path, monkeypatch):
    from skutag import storage

    out = tmp_path / "out"
    run_catalog(tiny_model, [str(six_images)], out, RunOptions(batch_size=2, workers=1, max_error_rate=1.0))
    removed = []
    real_remove = storage.remove

    def record(uri, options=None):
        removed.append(os.path.relpath(uri, out))
        if len(removed) == 2:
            raise OSError("the removal is cut short here")
        real_remove(uri, options)

    monkeypatch.setattr(storage, "remove", record)
    with pytest.raises(OSError):
        remove_run(str(out))
    assert removed[0] == os.path.join("_plan", "_PLAN") and not (out / "_plan" / "_PLAN").exists()


def test_prepare_out_resumes_refuses_another_run_and_overwrite_spares_other_shards(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"x")
    out = str(tmp_path / "out")
    plan = make_plan([str(tmp_path / "in")], out)
    names = OutputNames(Shard(1, 2))
    key = {"model_sha256": "a" * 64, "plan_id": plan.plan_id, "shard_index": 1, "shard_count": 2, "topk": 5}
    prepared = prepare_out(out, names, key, plan, overwrite=False)
    prepared.commit_log.parts = [
        CommitEntry.from_json({"unit": 0, "file": "part-00000.parquet", "rows": 1, "counts": {"ok": 1}})
    ]
    prepared.commit_log.save(out, names)
    (tmp_path / "out" / "part-00000.parquet").write_bytes(b"committed")
    other = OutputNames(Shard(0, 2))
    other_key = {**key, "shard_index": 0}
    prepare_out(out, other, other_key, plan, overwrite=False).commit_log.save(out, other)
    (tmp_path / "out" / "_SUCCESS.s0000-of-0002").write_bytes(b"")
    resumed = prepare_out(out, names, key, plan, overwrite=False)
    assert resumed.commit_log.committed_units() == {0} and not resumed.complete
    with pytest.raises(InputError, match="different run \\(topk 5 != 3"):
        prepare_out(out, names, {**key, "topk": 3}, plan, overwrite=False)
    fresh = prepare_out(out, names, {**key, "topk": 3}, plan, overwrite=True)
    assert fresh.commit_log.parts == []
    assert (tmp_path / "out" / "_SUCCESS.s0000-of-0002").exists()  # the other shard's files are untouched
    assert json.loads((tmp_path / "out" / other.commit_log).read_text())["key"]["topk"] == 5


def test_arrow_builders_equal_pyarrows_own():
    values = ["a", None, "ccc", ""]
    assert arrow.strings(values).equals(pa.array(values, pa.string()))
    numbers = [3, None, -1, 2**40]
    assert arrow.int64s(numbers).equals(pa.array(numbers, pa.int64()))
    assert arrow.int64s([1, 2]).null_count == 0
    flags = np.array([True, False, True] * 5)
    assert arrow.numbers(flags).equals(pa.array(flags))
    assert arrow.numbers(np.arange(5)[::2]).equals(pa.array(np.arange(5)[::2]))
    mask = pa.chunked_array([pa.array([True, None, False]), pa.array([None, True]).slice(1)])
    assert arrow.bools(mask).tolist() == [True, False, False, True]
    assert arrow.scalar(None, pa.bool_()).equals(pa.scalar(None, pa.bool_()))
    assert arrow.scalar("ok", pa.string()).equals(pa.scalar("ok"))


def test_read_parquet_fills_columns_an_older_file_lacks(tmp_path):
    path = tmp_path / "old.parquet"
    pq.write_table(pa.table({"id": ["x", "y"], "bytes": pa.array([1, 2], pa.int32())}), path)
    schema = pa.schema([("id", pa.string()), ("bytes", pa.int64()), ("label", pa.string())])
    table = arrow.read_parquet(path, schema=schema)
    assert table.schema == schema
    assert table.column("label").null_count == 2
    assert table.equals(pq.read_table(path, schema=schema))


def test_parts_of_an_older_larger_plan_never_sit_beside_a_new_success(tiny_model, six_images, tmp_path):
    """An --overwrite cut short can leave part files of the old plan; the run that completes removes
    those outside its plan before it writes OUT/_SUCCESS."""
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.table({"id": ["old"]}), out / "part-00042.parquet")
    summary = run_catalog(tiny_model, [str(six_images)], out, RunOptions(workers=1, part_rows=2))
    assert summary.complete and (out / "_SUCCESS").exists()
    assert sorted(p.name for p in out.glob("part-*")) == [f"part-0000{i}.parquet" for i in range(3)]
