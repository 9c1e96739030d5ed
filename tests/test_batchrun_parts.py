"""batchrun's pieces on their own: top-k, collate alignment, decode failures, OUT's control files, progress."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from skutag.batchrun.commit.out import CommitEntry, OutputNames, prepare_out
from skutag.batchrun.decode.loader import (
    Collate,
    Preprocess,
    ReadOptions,
    Sample,
    decode_one,
    default_workers,
)
from skutag.batchrun.engines.progress import ProgressReporter
from skutag.batchrun.plan.catalog import make_plan
from skutag.batchrun.plan.shard import Shard
from skutag.batchrun.predict.infer import host_model_input, topk_host

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
    read = ReadOptions(max_bytes=1 << 20, storage_options={})
    missing = decode_one(0, str(tmp_path / "gone.jpg"), -1, preprocess, read)
    assert missing.pixels is None and missing.error_kind == "unreadable" and missing.nbytes is None
    name, data = render_file(SynthSpec(count=1, classes=2, min_size=64, max_size=96), 0)
    (tmp_path / "good.jpg").write_bytes(data)
    good = decode_one(1, str(tmp_path / "good.jpg"), len(data), preprocess, read)
    assert good.pixels.shape == (32, 32, 3) and good.nbytes == len(data) and len(good.sha256) == 64
    small = ReadOptions(max_bytes=len(data) - 1, storage_options={})
    big = decode_one(2, str(tmp_path / "good.jpg"), len(data), preprocess, small)
    assert big.error_kind == "too_large" and big.nbytes is None  # judged from the size, never read


def test_default_workers_leave_the_cpu_to_inference_and_feed_a_gpu():
    assert default_workers("cpu", cores=1) == 1  # never more decode processes than cores
    assert default_workers("cpu", cores=2) == 2 and default_workers("cpu", cores=16) == 8
    assert default_workers("cuda", cores=16) == 15


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
    from skutag.batchrun.predict.infer import make_predictor, open_session
    from skutag.batchrun.predict.model import read_contract
    from skutag.exporter.graph import export_fp32
    from skutag.trainer.model import build_model

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
