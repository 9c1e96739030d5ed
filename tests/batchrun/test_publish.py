"""`skutag publish` and `skutag run --table`: nights merged into a Delta Lake table keyed by id (delta-rs).

Real OUTs made by `skutag run` on a tiny catalog that changes between nights (new, changed, removed
images), published to a local path and to the moto S3 server, read back by delta-rs and by Polars,
and compared row by row with the OUTs' committed rows.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from skutag.synth import SynthSpec, render_file
from tests.batchrun.support import committed_rows, skutag_in, tiny_catalog
from tests.support.cli import skutag

deltalake = pytest.importorskip("deltalake")
COMPARED = (
    "uri",
    "version",
    "status",
    "error_kind",
    "label",
    "label_index",
    "score",
    "sha256",
    "predicted_at",
)


@pytest.fixture(scope="module")
def nights(tiny_model, tmp_path_factory) -> dict[str, Path | list[str]]:
    """night1; then 3 images changed, 2 removed, 2 new; night2 with --since night1."""
    root = tmp_path_factory.mktemp("nights")
    catalog = tiny_catalog(root / "catalog", 24, seed=5)
    common = ("--batch-size", "8", "--part-rows", "8", "--max-error-rate", "1", "--no-progress")
    first = skutag("run", tiny_model, catalog, "--out", root / "night1", *common)
    assert first.returncode == 0, first.stderr
    ids = sorted(committed_rows(root / "night1"))
    changed, removed = ids[:3], ids[10:12]
    spec = SynthSpec(count=60, classes=4, min_size=48, max_size=64, seed=9)
    for i, name in enumerate(changed):
        (catalog / name).write_bytes(render_file(spec, 50 + i)[1])
    for name in removed:
        (catalog / name).unlink()
    new = [f"{ids[0].split('/')[0]}/zz-new-{i}.jpg" for i in range(2)]
    for i, name in enumerate(new):
        (catalog / name).write_bytes(render_file(spec, i)[1])
    second = skutag("run", tiny_model, catalog, "--out", root / "night2", "--since", root / "night1", *common)
    assert second.returncode == 0, second.stderr
    rival = skutag("run", tiny_model, catalog, "--out", root / "night2b", "--since", root / "night1", *common)
    assert rival.returncode == 0, rival.stderr  # the same night's changes in another OUT (another token)
    return {"root": root, "catalog": catalog, "night1": root / "night1", "night2": root / "night2",
            "changed": changed, "removed": removed, "new": new, "common": common}  # fmt: skip


def table_rows(uri: str, storage_options: dict[str, str] | None = None, version: int | None = None) -> dict:
    table = deltalake.DeltaTable(uri, storage_options=storage_options)
    if version is not None:
        table.load_as_version(version)
    rows = table.to_pyarrow_table().to_pylist()
    assert len({r["id"] for r in rows}) == len(rows), "an id twice in the table"
    return {r["id"]: r for r in rows}


def assert_same_rows(table: dict, out: Path) -> None:
    expected = committed_rows(out)
    assert sorted(table) == sorted(expected)
    for input_id, row in expected.items():
        assert {k: table[input_id][k] for k in COMPARED} == {k: row[k] for k in COMPARED}, input_id
        assert table[input_id]["topk_labels"] == row["topk_labels"]
        assert table[input_id]["removed_at"] is None


def test_two_nights_merge_new_changed_and_removed_ids_row_by_row(nights, tmp_path):
    table = str(tmp_path / "tags")
    first = skutag("publish", nights["night1"], "--table", table)
    assert first.returncode == 0, first.stderr
    assert "full merge" in first.stderr  # a new table: the whole night, said in a log line
    assert_same_rows(table_rows(table), nights["night1"])
    second = skutag("publish", nights["night2"], "--table", table)
    assert second.returncode == 0, second.stderr
    assert "incremental merge" in second.stderr and "full merge" not in second.stderr
    assert_same_rows(table_rows(table), nights["night2"])
    dt = deltalake.DeltaTable(table)
    merge = dt.history(1)[0]
    metrics = merge["operationMetrics"]
    assert (metrics["num_target_rows_inserted"], metrics["num_target_rows_updated"],
            metrics["num_target_rows_deleted"]) == (2, 3, 2)  # fmt: skip
    assert metrics["num_source_rows"] == 3 + 2 + 2  # fed only what --since marked
    summary = __import__("json").loads((nights["night2"] / "_summary.json").read_text())
    assert merge["skutag.model_sha256"] == summary["model_sha256"]
    assert merge["skutag.out"] == str(nights["night2"]) and merge["skutag.version"]
    assert merge["skutag.mode"] == "incremental"
    # the earlier night stays readable: time travel to the version the first publish made
    assert_same_rows(table_rows(table, version=dt.version() - 1), nights["night1"])


def test_publishing_the_same_out_twice_is_a_no_op(nights, tmp_path):
    table = str(tmp_path / "tags")
    assert skutag("publish", nights["night1"], "--table", table).returncode == 0
    version = deltalake.DeltaTable(table).version()
    again = skutag("publish", nights["night1"], "--table", table)
    assert again.returncode == 0 and "already published" in again.stderr
    assert deltalake.DeltaTable(table).version() == version


def test_an_unfinished_out_is_refused_in_one_line(nights, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(nights["night1"], partial)
    (partial / "_SUCCESS").unlink()
    result = skutag("publish", partial, "--table", tmp_path / "tags")
    assert result.returncode == 2 and "not finished" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "tags").exists()


def test_keep_removed_marks_ids_that_left_the_plan(nights, tmp_path):
    table = str(tmp_path / "tags")
    assert skutag("publish", nights["night1"], "--table", table).returncode == 0
    result = skutag("publish", nights["night2"], "--table", table, "--keep-removed")
    assert result.returncode == 0, result.stderr
    rows = table_rows(table)
    assert sorted(rows) == sorted(set(committed_rows(nights["night2"])) | set(nights["removed"]))
    assert all((rows[i]["removed_at"] is not None) == (i in nights["removed"]) for i in rows)


def test_two_publishers_at_once_apply_each_night_once_or_exit_75(nights, tmp_path):
    """Two OUTs of the same second night race onto a table that holds night1: each is committed whole
    once, or refused with 75 (nothing committed; retried here), or, when it starts after the later
    night is in, refused as older (2); the table ends as exactly the night committed last."""
    table = str(tmp_path / "tags")
    assert skutag("publish", nights["night1"], "--table", table).returncode == 0
    outs = [nights["night2"], nights["root"] / "night2b"]
    command = [sys.executable, "-m", "skutag", "publish"]
    procs = [
        subprocess.Popen([*command, str(o), "--table", table], stderr=subprocess.PIPE, text=True)
        for o in outs
    ]
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        results.append((proc.returncode, err))
    assert 0 in [code for code, _ in results], results
    for out, (code, err) in zip(outs, results, strict=True):
        assert code in (0, 2, 75), err
        if code == 75:
            assert "nothing of this night was committed, retry" in err
            code, err = (r := skutag("publish", out, "--table", table)).returncode, r.stderr
        if code == 2:
            assert "publish nights in order" in err
    history = [c for c in deltalake.DeltaTable(table).history() if "skutag.token" in c]
    published = [c["skutag.out"] for c in history]
    assert all(published.count(str(out)) <= 1 for out in outs) and published.count(str(nights["night1"])) == 1
    assert_same_rows(table_rows(table), Path(history[0]["skutag.out"]))


@pytest.mark.slow
def test_s3_table_from_publish_and_run_table_read_back_by_delta_rs_and_polars(s3, nights, tiny_model):
    """The table on the moto S3 server: night1 and night2 by `skutag publish`, night3 (nothing changed)
    by `skutag run --since night2 --table`; read back by delta-rs into Arrow and by Polars."""
    env = {**s3.env, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}
    table, option = "s3://shop/tags", ("--table-option", "conditional_put=etag")
    for night in ("night1", "night2"):
        result = skutag_in(env, "publish", nights[night], "--table", table, *option)
        assert result.returncode == 0, result.stderr
    night3 = nights["root"] / "night3"
    run = skutag_in(env, "run", tiny_model, nights["catalog"], "--out", night3, "--since", nights["night2"],
                    *nights["common"], "--table", table, *option)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "(incremental merge): 0 inserted, 0 updated, 0 deleted" in run.stderr
    options = {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}  # fmt: skip
    assert_same_rows(table_rows(table, options), night3)
    history = [c for c in deltalake.DeltaTable(table, storage_options=options).history() if "skutag.out" in c]
    assert [c["skutag.out"] for c in history] == [str(night3), str(nights["night2"]), str(nights["night1"])]
    polars = pytest.importorskip("polars")
    frame = polars.read_delta(table, storage_options=options)
    assert sorted(frame["id"].to_list()) == sorted(committed_rows(night3))
    first = polars.read_delta(table, version=history[-1]["version"], storage_options=options)
    assert sorted(first["id"].to_list()) == sorted(committed_rows(nights["night1"]))


@pytest.mark.slow
def test_a_new_column_is_added_by_schema_evolution_not_a_rewrite(nights, embedding_model, tmp_path):
    """A night with `--embeddings` (a new column) merges into the table night1 made: one MERGE commit."""
    table = str(tmp_path / "tags")
    assert skutag("publish", nights["night1"], "--table", table).returncode == 0
    wide = tmp_path / "wide"
    run = skutag("run", embedding_model, nights["catalog"], "--out", wide, "--embeddings", *nights["common"],
                 "--table", table)  # fmt: skip
    assert run.returncode == 0, run.stderr
    dt = deltalake.DeltaTable(table)
    assert dt.history(1)[0]["operation"] == "MERGE"
    assert "embedding" in dt.schema().to_arrow().names
    rows, expected = table_rows(table), committed_rows(wide)
    assert sorted(rows) == sorted(expected)
    assert all(rows[i]["embedding"] == pytest.approx(expected[i]["embedding"]) for i in expected)
