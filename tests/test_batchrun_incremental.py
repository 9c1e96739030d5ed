"""Nightly runs: --since reuses unchanged rows, ids that share an image share one decode, shards share one plan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from skutag.batchrun.api import run_catalog
from skutag.batchrun.options import RunOptions
from skutag.batchrun.plan.catalog import read_plan

from skutag.synth import SynthSpec, make_catalog, render_file


@pytest.fixture(scope="module")
def model(tiny_model) -> Path:
    return tiny_model


def rows(out: Path) -> dict[str, dict]:
    table = duckdb.sql(f"SELECT * FROM '{out}/*.parquet'").to_arrow_table().to_pylist()
    by_id = {row["id"]: row for row in table}
    assert len(by_id) == len(table), "duplicate ids"
    return by_id


def same_prediction(a: dict, b: dict) -> bool:
    keys = ("uri", "version", "status", "error_kind", "label_index", "width", "height", "bytes", "sha256")
    return all(a[k] == b[k] for k in keys) and a["topk_scores"] == pytest.approx(b["topk_scores"], abs=1e-5)


def test_since_reuses_unchanged_rows_and_predicts_only_new_and_changed(model, tmp_path):
    catalog = tmp_path / "catalog"
    make_catalog(catalog, SynthSpec(count=40, classes=4, min_size=48, max_size=64, seed=5))
    options = RunOptions(batch_size=8, part_rows=16, max_error_rate=1.0)
    run_catalog(model, [str(catalog)], tmp_path / "night1", options)
    before = rows(tmp_path / "night1")
    files = sorted(before)
    changed, removed = files[:3], files[3:5]
    spec = SynthSpec(count=60, classes=4, min_size=48, max_size=64, seed=9)
    for i, name in enumerate(changed):
        (catalog / name).write_bytes(render_file(spec, 50 + i)[1])  # new bytes, new size:mtime
    for name in removed:
        (catalog / name).unlink()
    new = [f"{files[0].split('/')[0]}/zz-new-{i}.jpg" for i in range(2)]
    for i, name in enumerate(new):
        (catalog / name).write_bytes(render_file(spec, i)[1])
    since = run_catalog(
        model, [str(catalog)], tmp_path / "night2", options.replace(since=str(tmp_path / "night1"))
    )
    fresh = run_catalog(model, [str(catalog)], tmp_path / "fresh", options)
    after, scratch = rows(tmp_path / "night2"), rows(tmp_path / "fresh")
    assert sorted(after) == sorted(scratch) == sorted(set(files) - set(removed) | set(new))
    for input_id, row in after.items():
        if input_id in changed or input_id in new:
            assert (
                same_prediction(row, scratch[input_id])
                and row["predicted_at"] > before[files[0]]["predicted_at"]
            )
        else:
            assert row == before[input_id]  # copied whole, predicted_at kept
    unchanged = len(files) - len(changed) - len(removed)
    assert (since.reused, since.new, since.changed, since.removed) == (unchanged, 2, 3, 2)
    assert since.decoded == 5 and since.predicted == 5 and fresh.decoded == len(after)


def test_since_with_another_model_reuses_nothing_and_says_so(model, tmp_path):
    import onnx

    catalog = tmp_path / "catalog"
    make_catalog(catalog, SynthSpec(count=8, classes=2, min_size=48, max_size=64, seed=2))
    run_catalog(model, [str(catalog)], tmp_path / "a", RunOptions())
    other = tmp_path / "other.onnx"
    proto = onnx.load(str(model))
    proto.doc_string = "retrained"
    onnx.save(proto, str(other))
    summary = run_catalog(other, [str(catalog)], tmp_path / "b", RunOptions(since=str(tmp_path / "a")))
    assert summary.reused == 0 and summary.decoded == 8
    assert "reusing nothing" in summary.since_note and "model sha256" in summary.since_note


def test_a_manifest_of_1000_ids_over_50_images_gives_1000_rows_and_50_decodes(model, tmp_path):
    catalog = tmp_path / "catalog"
    make_catalog(catalog, SynthSpec(count=50, classes=4, min_size=48, max_size=64, seed=7))
    images = sorted(str(p) for p in catalog.rglob("*") if p.suffix in (".jpg", ".png"))
    assert len(images) == 50
    ids = [f"sku-{i:04d}" for i in range(1000)]
    pq.write_table(
        pa.table({"id": ids, "path": [images[(i * 7) % 50] for i in range(1000)]}), tmp_path / "m.parquet"
    )
    summary = run_catalog(model, [str(tmp_path / "m.parquet")], tmp_path / "out", RunOptions(batch_size=16))
    out = rows(tmp_path / "out")
    assert sorted(out) == ids and summary.rows == 1000 and summary.decoded == 50
    by_image: dict[str, set] = {}
    for row in out.values():
        by_image.setdefault(row["uri"], set()).add((row["label_index"], row["sha256"]))
    assert len(by_image) == 50 and all(len(v) == 1 for v in by_image.values())  # one prediction per image


def test_shards_started_while_the_catalog_changes_cover_one_plan_exactly_once(model, tmp_path):
    catalog = tmp_path / "catalog"
    make_catalog(catalog, SynthSpec(count=48, classes=4, min_size=48, max_size=64, seed=11))
    out = tmp_path / "out"

    def shard(index: int) -> subprocess.Popen:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "skutag",
                "run",
                str(model),
                str(catalog),
                "--out",
                str(out),
                "--shard",
                f"{index}/3",
                "--part-size",
                "8",
                "--no-progress",
                "--max-error-rate",
                "1",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    spec = SynthSpec(count=70, classes=4, min_size=48, max_size=64, seed=12)
    processes = [shard(0)]
    for i in range(6):  # uploads land between the shards' starts
        (catalog / f"late-{i}.jpg").write_bytes(render_file(spec, i)[1])
    processes.append(shard(1))
    for i in range(6, 9):
        (catalog / f"late-{i}.jpg").write_bytes(render_file(spec, i)[1])
    processes.append(shard(2))
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    plan = read_plan(str(out))
    planned = []
    for unit in plan.units:
        planned += plan.read_unit(unit).column("id").to_pylist()
    got = duckdb.sql(f"SELECT id FROM '{out}/*.parquet'").fetchall()
    assert sorted(i for (i,) in got) == sorted(planned)  # each planned input exactly once
    assert len(planned) == plan.total and len(set(planned)) == len(planned)
    assert all((out / f"_SUCCESS.s000{i}-of-0003").exists() for i in range(3))
