"""batchrun's pieces on their own: top-k, collate alignment, the part writer and manifest, progress lines."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from batchrun.infer import Predictions, host_model_input, topk_host
from batchrun.loader import Collate, Preprocess, Sample, decode_one, default_workers
from batchrun.manifest import Manifest, OutputNames, prepare_out
from batchrun.progress import ProgressReporter
from batchrun.ranges import Shard
from batchrun.writer import PartWriter, prediction_schema, row_group_rows
from skutag.card import ModelCard
from skutag.errors import InputError
from skutag.synth import SynthSpec, render_file


def test_topk_host_is_sorted_breaks_ties_by_index_and_clips_k():
    scores = np.array([[0.1, 0.4, 0.1, 0.4], [0.7, 0.1, 0.15, 0.05]], np.float32)
    indices, values = topk_host(scores, 3)
    assert indices.tolist() == [[1, 3, 0], [0, 2, 1]] and indices.dtype == np.int32
    np.testing.assert_allclose(values, [[0.4, 0.4, 0.1], [0.7, 0.15, 0.1]])
    random = np.random.default_rng(0).random((50, 30)).astype(np.float32)
    indices, _ = topk_host(random, 5)
    assert indices.tolist() == np.argsort(-random, axis=1, kind="stable")[:, :5].tolist()
    assert topk_host(scores, 10)[0].shape == (2, 4)


def test_host_input_of_a_float_model_is_normalised_nchw():
    card = ModelCard.for_training("x", ["a", "b"], image_size=4)
    contract = type("C", (), {"input_dtype": "float32", "card": card})()
    pixels = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    expected = ((pixels / 255.0 - np.array(card.mean)) / np.array(card.std)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(host_model_input(pixels, contract), expected, rtol=1e-5, atol=1e-5)


def sample(index: int, ok: bool, size: int = 4) -> Sample:
    pixels = np.full((size, size, 3), index + 1, np.uint8) if ok else None
    kind, error = (None, None) if ok else ("truncated", "cut short")
    return Sample(index, pixels, kind, error, 10 if ok else None, 20 if ok else None, 99, "ab", 0.5)


def test_collate_keeps_error_rows_aligned_and_pads_to_a_fixed_batch():
    batch = Collate(image_size=4, pad_to=5)([sample(7, True), sample(8, False), sample(9, True)])
    assert batch.indices.tolist() == [7, 8, 9] and batch.ok.tolist() == [True, False, True]
    assert batch.pixels.shape == (5, 4, 4, 3) and batch.pixels.dtype == torch.uint8
    assert batch.pixels[:, 0, 0, 0].tolist() == [8, 0, 10, 0, 0]
    assert batch.error_kinds == [None, "truncated", None] and batch.widths.tolist() == [10, -1, 10]
    assert len(batch) == 3 and batch.decode_seconds == pytest.approx(1.5)


def test_decode_one_reports_failures_as_samples(tmp_path):
    preprocess = Preprocess(image_size=32, resize_size=40, interpolation="bilinear")
    missing = decode_one(0, str(tmp_path / "gone.jpg"), preprocess)
    assert missing.pixels is None and missing.error_kind == "unreadable" and missing.nbytes is None
    name, data = render_file(SynthSpec(count=1, classes=2, min_size=64, max_size=96), 0)
    (tmp_path / "good.jpg").write_bytes(data)
    good = decode_one(1, str(tmp_path / "good.jpg"), preprocess)
    assert good.pixels.shape == (32, 32, 3) and good.nbytes == len(data) and len(good.sha256) == 64


def test_default_workers_leave_the_cpu_to_inference_and_feed_a_gpu():
    assert default_workers("cpu", cores=2) == 1 and default_workers("cpu", cores=16) == 4
    assert default_workers("cuda", cores=16) == 15


def test_row_groups_shrink_with_embeddings():
    assert row_group_rows(None, 50_000) == 50_000
    assert row_group_rows(2048, 50_000) < 10_000


def fake_batch(indices: list[int], ok: list[bool], k: int = 2):
    batch = Collate(image_size=2)([sample(i, o, size=2) for i, o in zip(indices, ok, strict=True)])
    rows = len(indices)
    predictions = Predictions(
        np.tile(np.arange(k, dtype=np.int32), (rows, 1)), np.full((rows, k), 0.5, np.float32), None
    )
    return batch, predictions


def make_writer(tmp_path, names, manifest, part_rows=5):
    import pyarrow as pa

    ids = pa.array([f"id{i:03d}" for i in range(100)], pa.large_string())
    return PartWriter(
        tmp_path,
        names,
        manifest,
        schema=prediction_schema(None, {"skutag.version": "test"}),
        ids=ids,
        uris=ids,
        classes=["a", "b", "c"],
        part_rows=part_rows,
    )


def test_part_writer_commits_parts_of_part_rows_with_their_ranges_and_counts(tmp_path):
    names = OutputNames(Shard(1, 3))
    manifest = Manifest({"k": 1})
    writer = make_writer(tmp_path, names, manifest).start()
    for start in range(0, 12, 3):
        writer.put(*fake_batch([start + 10, start + 11, start + 12], [True, start != 3, True]))
    writer.close()
    saved = json.loads((tmp_path / names.manifest).read_text())["parts"]
    assert [p["file"] for p in saved] == [f"part-s0001-of-0003-{n:05d}.parquet" for n in range(3)]
    assert [p["rows"] for p in saved] == [5, 5, 2] and saved[0]["ranges"] == [[10, 15]]
    assert saved[0]["counts"] == {"error:truncated": 1, "ok": 4}
    table = pq.read_table(tmp_path / saved[1]["file"])
    assert table.column("id").to_pylist() == [f"id{i:03d}" for i in range(15, 20)]
    assert table.column("topk_labels").to_pylist()[0] == ["a", "b"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_part_writer_abort_leaves_no_temporary_and_no_manifest_entry(tmp_path):
    names = OutputNames(Shard())
    manifest = Manifest({"k": 1})
    writer = make_writer(tmp_path, names, manifest, part_rows=50).start()
    writer.put(*fake_batch([0, 1], [True, True]))
    writer.abort()
    assert manifest.parts == [] and not list(tmp_path.iterdir())


def test_prepare_out_discards_uncommitted_files_and_refuses_another_run(tmp_path):
    names = OutputNames(Shard())
    key = {"model_sha256": "a" * 64, "shard_index": 0, "shard_count": 1, "topk": 5}
    prepared = prepare_out(tmp_path, names, key, overwrite=False)
    prepared.manifest.parts = [
        {"file": "part-00000.parquet", "number": 0, "rows": 3, "ranges": [[0, 3]], "counts": {}}
    ]
    prepared.manifest.save(tmp_path, names)
    (tmp_path / "part-00000.parquet").write_bytes(b"committed")
    (tmp_path / "part-00001.parquet").write_bytes(b"renamed, never recorded")
    (tmp_path / ".part-00002.parquet.x1y2.tmp").write_bytes(b"half written")
    (tmp_path / "notes.txt").write_text("not ours")
    resumed = prepare_out(tmp_path, names, key, overwrite=False)
    assert resumed.manifest.committed() == [(0, 3)] and resumed.manifest.next_part_number() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_manifest.json", "notes.txt", "part-00000.parquet"]
    with pytest.raises(InputError, match="different run \\(topk 5 != 3"):
        prepare_out(tmp_path, names, {**key, "topk": 3}, overwrite=False)
    fresh = prepare_out(tmp_path, names, {**key, "topk": 3}, overwrite=True)
    assert fresh.manifest.parts == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "_manifest.json",
        "notes.txt",
    ]


def test_progress_without_a_terminal_prints_plain_lines():
    stream = io.StringIO()
    with ProgressReporter(10, stream=stream, interval=0.0) as progress:
        progress.advance(4)
        progress.advance(6)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("skutag run: 4/10 images (40.0%)") and "images/s" in lines[0]
    assert lines[-1].startswith("skutag run: 10/10 images (100.0%)")


@pytest.mark.gpu
def test_io_bound_cuda_predictions_equal_the_cpu_ones(tmp_path):
    from batchrun.infer import make_predictor, open_session
    from batchrun.model import read_contract
    from exporter.graph import export_fp32
    from trainer.model import build_model

    path = tmp_path / "m.onnx"
    export_fp32(
        build_model("resnet18", 4).eval(),
        ModelCard.for_training("resnet18", list("abcd"), image_size=64),
        path,
    )
    contract = read_contract(path)
    batch = Collate(image_size=64, pad_to=8)([sample(i, i != 2, size=64) for i in range(5)])
    results = {}
    for device in ("cpu", "cuda"):
        session, info = open_session(contract, device, batch_size=8)
        predict = make_predictor(session, info, contract, topk=3, embeddings=False, batch_size=8)
        results[device] = predict(batch.pin_memory() if device == "cuda" else batch)
    assert results["cuda"].topk_indices[:5].tolist() == results["cpu"].topk_indices.tolist()
    np.testing.assert_allclose(
        results["cuda"].topk_scores[:5], results["cpu"].topk_scores, rtol=1e-3, atol=1e-4
    )
