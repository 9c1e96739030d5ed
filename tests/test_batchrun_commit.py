"""Commit by task id, the shard lease, completion a reader can trust, and the run's metrics file.

Real parts throughout: the real supervised DataLoader and watchdog (the race made
deterministic by a dataset that makes the watchdog kill a worker for a task it has already
delivered), real `skutag run` processes competing for one shard, real Parquet parts.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from skutag.batchrun.api import RunSummary, run_catalog
from skutag.batchrun.commit.out import CommitEntry, CommitLog, OutputNames, remove_run
from skutag.batchrun.commit.reader import CommittedRows
from skutag.batchrun.decode.loader import TaskDataset, _worker_id
from skutag.batchrun.options import RunOptions
from skutag.batchrun.plan.shard import Shard

from skutag.errors import InputError
from skutag.synth import SynthSpec, make_catalog
from tests.cli import skutag

COLUMNS = ["id", "status", "error_kind", "label_index", "score", "sha256"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("six")
    make_catalog(root, SynthSpec(count=6, classes=2, min_size=64, max_size=96, seed=3))
    return root


@pytest.fixture(scope="module")
def clean(tiny_model, catalog, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("clean") / "out"
    run_catalog(tiny_model, [str(catalog)], out, RunOptions(batch_size=2, workers=1, max_error_rate=1.0))
    return rows_by_id(out)


def rows_by_id(out) -> dict[str, dict]:
    table = CommittedRows(str(out)).dataset().to_table(columns=COLUMNS)
    rows = table.to_pylist()
    assert len({r["id"] for r in rows}) == len(rows)
    return {r["id"]: r for r in rows}


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


def test_a_task_delivered_twice_commits_once_on_its_own_id(tiny_model, catalog, clean, tmp_path, monkeypatch):
    import skutag.batchrun.engines.local as local

    RacingDataset.marker = str(tmp_path / "raced")
    monkeypatch.setattr(local, "TaskDataset", RacingDataset)
    out = tmp_path / "out"
    options = RunOptions(batch_size=2, workers=1, decode_timeout_s=30.0, max_error_rate=1.0)
    summary = run_catalog(tiny_model, [str(catalog)], out, options)
    assert Path(RacingDataset.marker).exists()  # the race happened
    assert summary.repeats == 1 and summary.worker_restarts == 1
    assert summary.rows == 6 and summary.ok == 6  # the first delivery (the real result) won
    assert rows_by_id(out) == clean  # every prediction on its own id
    monkeypatch.undo()
    again = run_catalog(tiny_model, [str(catalog)], out, options)
    assert again.already_complete and rows_by_id(out) == clean


def test_commit_log_never_goes_backwards(tmp_path):
    names = OutputNames(Shard())
    out = str(tmp_path)
    key = {"plan_id": "p", "model_sha256": "m"}
    longer = CommitLog(
        key, [CommitEntry.from_json({"unit": u, "file": f"part-{u:05d}.parquet"}) for u in range(3)]
    )
    longer.save(out, names)
    zombie = CommitLog(key, [CommitEntry.from_json({"unit": 1, "file": "part-00001.parquet", "rows": 7})])
    zombie.save(out, names)
    stored = json.loads((tmp_path / names.commit_log).read_text())
    assert [p["unit"] for p in stored["parts"]] == [0, 1, 2] and stored["parts"][1]["rows"] == 7
    other_run = CommitLog({**key, "plan_id": "q"}, [])
    other_run.save(out, names)  # a different run (e.g. --overwrite) does not inherit units
    assert json.loads((tmp_path / names.commit_log).read_text())["parts"] == []


def test_sharded_run_gets_one_global_success_from_the_last_shard_and_index_reads_committed_parts(
    tiny_model, catalog, clean, tmp_path
):
    out = tmp_path / "out"
    common = dict(batch_size=2, workers=1, part_rows=2, max_error_rate=1.0)
    first = run_catalog(tiny_model, [str(catalog)], out, RunOptions(shard=Shard(0, 2), **common))
    assert (
        not first.complete and not (out / "_SUCCESS").exists() and (out / "_SUCCESS.s0000-of-0002").exists()
    )
    stray = out / "part-00009.parquet"  # a part no commit log lists (a crashed attempt's leftover)
    pq.write_table(pq.read_table(out / "part-00000.parquet"), stray)
    second = run_catalog(tiny_model, [str(catalog)], out, RunOptions(shard=Shard(1, 2), **common))
    assert second.complete and (out / "_SUCCESS").exists()
    assert rows_by_id(out) == clean  # the reader never reads the stray part
    assert str(stray) not in CommittedRows(str(out)).uris()


def test_since_refuses_an_incomplete_run_unless_told(tiny_model, catalog, tmp_path):
    prev = tmp_path / "prev"
    common = dict(batch_size=2, workers=1, part_rows=2, max_error_rate=1.0)
    run_catalog(tiny_model, [str(catalog)], prev, RunOptions(shard=Shard(0, 2), **common))
    result = skutag("run", tiny_model, catalog, "--out", tmp_path / "night", "--since", prev, "--no-progress")
    assert result.returncode == 2 and "incomplete (no _SUCCESS" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    summary = run_catalog(
        tiny_model,
        [str(catalog)],
        tmp_path / "night",
        RunOptions(since=str(prev), since_incomplete=True, **common),
    )
    assert summary.reused == 2 and summary.rows == 6  # shard 0's committed unit was copied
    with pytest.raises(InputError, match="incomplete"):
        run_catalog(tiny_model, [str(catalog)], tmp_path / "n2", RunOptions(since=str(prev), **common))


def test_rerun_of_a_finished_out_whose_summary_has_unknown_fields(tiny_model, catalog, tmp_path):
    out = tmp_path / "out"
    options = RunOptions(batch_size=2, workers=1, max_error_rate=1.0)
    run_catalog(tiny_model, [str(catalog)], out, options)
    summary = json.loads((out / "_summary.json").read_text())
    summary["field_of_a_later_version"] = {"x": 1}
    del summary["decode"]  # and one an earlier version did not write
    (out / "_summary.json").write_text(json.dumps(summary))
    again = run_catalog(tiny_model, [str(catalog)], out, options)
    assert again.already_complete and again.rows == 6 and again.decode is None
    assert isinstance(RunSummary.from_dict(summary), RunSummary)


def test_remove_run_takes_the_plan_away_first(tiny_model, catalog, tmp_path, monkeypatch):
    from skutag import storage

    out = tmp_path / "out"
    run_catalog(tiny_model, [str(catalog)], out, RunOptions(batch_size=2, workers=1, max_error_rate=1.0))
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


def test_storage_option_values_stay_out_of_repr_and_metadata():
    from skutag.batchrun.decode.loader import ReadOptions

    options = RunOptions(storage_options={"secret": "hunter2", "key": "AKIAXXX"})
    assert "hunter2" not in repr(options) and "AKIAXXX" not in repr(options)
    assert "hunter2" not in json.dumps(options.record())
    assert "hunter2" not in repr(ReadOptions(1, {"secret": "hunter2"}))


def test_run_options_drive_the_cli_and_the_run_key():
    import dataclasses

    import click
    from skutag.batchrun.cli import run

    flags = {opt for param in run.params if isinstance(param, click.Option) for opt in param.opts}
    declared = [f for f in dataclasses.fields(RunOptions) if f.metadata.get("flag")]
    assert {f.metadata["flag"].split(",")[0] for f in declared} <= flags
    defaults = {param.name: param.default for param in run.params}
    assert defaults["topk"] == RunOptions().topk and defaults["batch_size"] == RunOptions().batch_size
    key = RunOptions(topk=3, embeddings=True, shard=Shard(1, 4)).key_values()
    assert key == {"topk": 3, "embeddings": True, "shard_index": 1, "shard_count": 4}


def test_metrics_file_parses_as_prometheus_text_and_carries_the_counts(tiny_model, catalog, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    metrics = tmp_path / "metrics" / "skutag.prom"
    out = tmp_path / "out"
    result = skutag("run", tiny_model, catalog, "--out", out, "--no-progress", "--metrics-file", metrics)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "_summary.json").read_text())
    samples = {
        s.name: s for family in text_string_to_metric_families(metrics.read_text()) for s in family.samples
    }
    assert samples["skutag_run_rows"].value == summary["rows"] == 6
    assert samples["skutag_run_rows_ok"].value == summary["ok"]
    assert samples["skutag_run_success"].value == 1 and samples["skutag_run_complete"].value == 1
    assert samples["skutag_run_rows"].labels == {"out": str(out), "shard": "0/1"}
    assert not any(p.name.startswith(".") for p in metrics.parent.iterdir())  # renamed into place
