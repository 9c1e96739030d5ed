"""`skutag run` end to end on a small model: one row per input, resume after SIGKILL, shards, refusals;
its options, progress lines and metrics file.

The model is a resnet18 at 64 px exported once per module (tests may import the exporter;
batchrun itself never does). The catalog is the shared small catalog plus every bad-input
kind of tests/support/inputs.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
from skutag.batchrun.engines.progress import ProgressReporter
from skutag.batchrun.options import RunOptions
from skutag.batchrun.plan.shard import Shard
from skutag.batchrun.predict.model import ForeignPreprocessing

from skutag.card import METADATA_KEY, ModelCard
from skutag.errors import InputError
from skutag.images import load_image
from skutag.runtime import create_session, gpu_present
from tests.batchrun.support import committed_parts, read_rows, run
from tests.support.cli import skutag

CLASSES = ["boot", "cup", "lamp", "sock"]


@pytest.fixture(scope="module")
def model(embedding_model) -> Path:
    return embedding_model


@pytest.fixture(scope="module")
def baseline(model, small_catalog, awkward, tmp_path_factory):
    """An uninterrupted run of the mixed catalog, in several parts."""
    out = tmp_path_factory.mktemp("baseline")
    summary = run(model, [small_catalog, awkward[0]], out, batch_size=8, part_rows=40, max_error_rate=1.0)
    return out, summary


def without_times(rows: dict[str, dict]) -> dict[str, dict]:
    return {i: {k: v for k, v in row.items() if k != "predicted_at"} for i, row in rows.items()}


def test_one_row_per_input_ok_for_good_images_and_the_right_error_kind(baseline, expected):
    out, summary = baseline
    rows = read_rows(out)
    assert set(rows) == set(expected)
    for input_id, kind in expected.items():
        row = rows[input_id]
        if kind is None:
            assert row["status"] == "ok" and row["error_kind"] is None, (input_id, row["error"])
            assert row["label"] == CLASSES[row["label_index"]] == row["topk_labels"][0]
            assert (
                len(row["topk_scores"]) == len(CLASSES)
                and row["topk_scores"] == sorted(row["topk_scores"])[::-1]
            )
            assert row["width"] > 0 and row["height"] > 0
            assert row["sha256"] == hashlib.sha256(Path(row["uri"]).read_bytes()).hexdigest()
            assert row["bytes"] == Path(row["uri"]).stat().st_size
        else:
            assert row["status"] == "error" and row["error_kind"] == kind and row["error"], input_id
            assert row["label"] is None and row["topk_labels"] is None and row["score"] is None
    assert summary.rows == len(expected) and summary.parts == -(-len(expected) // 40)
    assert summary.errors_by_kind == {k: 1 for k in expected.values() if k}


def test_duckdb_counts_match_summary_json_and_files_carry_the_metadata(baseline, model):
    out, _ = baseline
    summary = json.loads((out / "_summary.json").read_text())
    assert (out / "_SUCCESS").exists()
    counts = dict(duckdb.sql(f"SELECT status, count(*) FROM '{out}/*.parquet' GROUP BY status").fetchall())
    assert counts == {"ok": summary["ok"], "error": summary["errors"]}
    kinds = dict(
        duckdb.sql(
            f"SELECT error_kind, count(*) FROM '{out}/*.parquet' WHERE status = 'error' GROUP BY 1"
        ).fetchall()
    )
    assert kinds == summary["errors_by_kind"]
    manifest = json.loads((out / "_commits.json").read_text())
    assert sorted(p.name for p in out.glob("*.parquet")) == [part["file"] for part in manifest["parts"]]
    assert pq.read_table(out).num_rows == summary["rows"]  # OUT reads as one table (`_` files ignored)
    metadata = pq.read_schema(out / manifest["parts"][0]["file"]).metadata
    assert ModelCard.from_json(metadata[b"skutag.card"]).classes == tuple(CLASSES)
    assert metadata[b"skutag.model_sha256"].decode() == hashlib.sha256(model.read_bytes()).hexdigest()
    assert json.loads(metadata[b"skutag.run_options"])["topk"] == len(CLASSES)


def test_top1_equals_onnx_runtime_on_skutag_images_output(baseline, model):
    out, _ = baseline
    session, _ = create_session(model, "cpu")
    card = ModelCard.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    ok = [row for row in read_rows(out).values() if row["status"] == "ok"]
    pixels = np.stack(
        [
            load_image(
                row["uri"],
                resize_size=card.resize_size,
                image_size=card.image_size,
                interpolation=card.interpolation,
            ).pixels
            for row in ok
        ]
    )
    probs = session.run(["probs"], {"image": pixels})[0]
    assert [row["label_index"] for row in ok] == probs.argmax(1).tolist()
    np.testing.assert_allclose([row["score"] for row in ok], probs.max(1), rtol=1e-4, atol=1e-5)


def test_rerun_of_a_complete_out_does_nothing(baseline, model, small_catalog, awkward):
    out, first = baseline
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run(model, [small_catalog, awkward[0]], out, batch_size=8, part_rows=40, max_error_rate=1.0)
    assert again.already_complete and again.rows == first.rows
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_two_shards_sharing_one_out_equal_the_unsharded_run(
    baseline, model, small_catalog, awkward, tmp_path
):
    out, _ = baseline
    for index in (0, 1):
        run(
            model, [small_catalog, awkward[0]], tmp_path, shard=f"{index}/2", part_rows=40, max_error_rate=1.0
        )
    assert (tmp_path / "_SUCCESS.s0000-of-0002").exists() and (
        tmp_path / "_commits.s0001-of-0002.json"
    ).exists()
    sharded, whole = read_rows(tmp_path), read_rows(out)
    assert sharded.keys() == whole.keys()
    for input_id, row in whole.items():
        assert (
            sharded[input_id]["status"] == row["status"]
            and sharded[input_id]["label_index"] == row["label_index"]
        )
    with pytest.raises(InputError, match="different run"):  # another layout in the same OUT
        run(model, [small_catalog, awkward[0]], tmp_path, shard="0/3")


def test_sigkill_after_the_first_part_then_rerun_gives_one_row_per_input(
    baseline, model, small_catalog, awkward, tmp_path
):
    out = tmp_path / "out"
    command = ["run", str(model), str(small_catalog), str(awkward[0]), "--out", str(out), "--batch-size", "4",
               "--part-size", "8", "--workers", "1", "--max-error-rate", "1", "--no-progress"]  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "skutag", *command], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not committed_parts(out) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the orphaned workers too
    committed = committed_parts(out)
    assert committed and not (out / "_SUCCESS").exists(), "the run ended before it could be killed"
    summary = run(model, [small_catalog, awkward[0]], out, batch_size=4, part_rows=8, max_error_rate=1.0)
    assert summary.resumed_rows == sum(p["rows"] for p in committed) > 0
    assert summary.processed_rows == summary.rows - summary.resumed_rows
    resumed, whole = read_rows(out), read_rows(baseline[0])
    assert resumed.keys() == whole.keys() and summary.rows == len(whole)
    for input_id, row in whole.items():
        assert resumed[input_id]["status"] == row["status"]
        assert resumed[input_id]["label_index"] == row["label_index"]
        if row["status"] == "ok":
            assert resumed[input_id]["topk_scores"] == pytest.approx(row["topk_scores"], rel=1e-4, abs=1e-6)
    assert not list(out.glob(".*.tmp"))


def test_an_existing_out_of_another_model_is_refused_unless_overwrite(model, awkward, tmp_path):
    other = tmp_path / "other.onnx"
    proto = onnx.load(str(model))
    proto.doc_string = "another model"
    onnx.save(proto, str(other))
    out = tmp_path / "out"
    run(model, [awkward[0]], out, max_error_rate=1.0)
    with pytest.raises(InputError, match="different run \\(model sha256"):
        run(other, [awkward[0]], out, max_error_rate=1.0)
    summary = run(other, [awkward[0]], out, max_error_rate=1.0, overwrite=True)
    assert (
        not summary.already_complete
        and summary.model_sha256 == hashlib.sha256(other.read_bytes()).hexdigest()
    )


def test_embeddings_column_and_a_model_without_that_output(model, awkward, tmp_path):
    run(model, [awkward[0]], tmp_path / "emb", embeddings=True, topk=2, max_error_rate=1.0)
    table = pq.read_table(sorted((tmp_path / "emb").glob("*.parquet"))[0])
    assert table.schema.field("embedding").type.list_size == 512
    rows = table.to_pylist()
    assert all((row["embedding"] is None) == (row["status"] == "error") for row in rows)
    assert all(len(row["topk_labels"]) == 2 for row in rows if row["status"] == "ok")
    proto = onnx.load(str(model))
    proto.graph.output.pop()  # drop `embedding`
    plain = tmp_path / "plain.onnx"
    onnx.save(proto, str(plain))
    with pytest.raises(InputError, match="has no `embedding` output"):
        run(plain, [awkward[0]], tmp_path / "none", embeddings=True)


def test_a_model_without_a_card_needs_labels_and_preprocessing_flags(model, awkward, tmp_path):
    proto = onnx.load(str(model))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(InputError, match="no skutag card: pass --labels"):
        run(bare, [awkward[0]], tmp_path / "a")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(CLASSES) + "\n")
    foreign = ForeignPreprocessing(labels=labels, image_size=64)
    run(bare, [awkward[0]], tmp_path / "b", foreign=foreign, max_error_rate=1.0)
    run(model, [awkward[0]], tmp_path / "c", max_error_rate=1.0)
    assert without_times(read_rows(tmp_path / "b")) == without_times(read_rows(tmp_path / "c"))
    with pytest.raises(InputError, match="carries a skutag card"):
        run(model, [awkward[0]], tmp_path / "d", foreign=foreign)


def test_cli_exit_codes_3_above_the_error_rate_then_0_at_rate_1(model, small_catalog, awkward, tmp_path):
    out = tmp_path / "out"
    result = skutag(
        "run", str(model), str(small_catalog), str(awkward[0]), "--out", str(out), "--no-progress"
    )
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr and "--max-error-rate" in result.stderr.splitlines()[-1]
    assert (
        duckdb.sql(f"SELECT count(*) FROM '{out}/*.parquet'").fetchall()[0][0]
        == json.loads((out / "_summary.json").read_text())["rows"]
    )
    again = skutag(
        "run", str(model), str(small_catalog), str(awkward[0]), "--out", str(out), "--max-error-rate", "1"
    )
    assert again.returncode == 0 and "already complete" in again.stderr


@pytest.mark.skipif(gpu_present(), reason="checks the behaviour of a machine without a GPU")
def test_cli_device_cuda_fails_loudly_in_one_line(model, awkward, tmp_path):
    result = skutag("run", str(model), str(awkward[0]), "--out", str(tmp_path / "out"), "--device", "cuda")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --device cuda was requested"), result.stderr


def test_cli_missing_model_or_source_is_exit_2_without_traceback(model, tmp_path):
    missing_model = skutag("run", str(tmp_path / "missing.onnx"), str(tmp_path), "--out", str(tmp_path / "o"))
    missing_source = skutag("run", str(model), str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    for result, name in ((missing_model, "missing.onnx"), (missing_source, "nowhere")):
        assert result.returncode == 2 and "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and name in errors[0]


def test_progress_without_a_terminal_prints_plain_lines():
    stream = io.StringIO()
    with ProgressReporter(10, stream=stream, interval=0.0) as progress:
        progress.advance(4)
        progress.advance(6)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("skutag run: 4/10 images (40.0%)") and "images/s" in lines[0]
    assert lines[-1].startswith("skutag run: 10/10 images (100.0%)")


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


def test_metrics_file_parses_as_prometheus_text_and_carries_the_counts(tiny_model, six_images, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    metrics = tmp_path / "metrics" / "skutag.prom"
    out = tmp_path / "out"
    result = skutag("run", tiny_model, six_images, "--out", out, "--no-progress", "--metrics-file", metrics)
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
