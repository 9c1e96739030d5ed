"""skutag bench: result files with consistent, positive figures."""

from __future__ import annotations

import json

import pytest

from skutag.card import ModelCard
from tests.support.cli import skutag


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from skutag.exporter.graph import export_fp32
    from skutag.trainer.model import build_model

    card = ModelCard.for_training("resnet18", ["a", "b", "c"], image_size=64)
    path = tmp_path_factory.mktemp("bench") / "tiny.onnx"
    export_fp32(build_model("resnet18", 3).eval(), card, path)
    return path


def test_bench_writes_consistent_results(tiny_model, tmp_path):
    out = tmp_path / "bench"
    result = skutag(
        "bench",
        tiny_model,
        "--out",
        out,
        "--batch-sizes",
        "1,4",
        "--device",
        "cpu",
        "--min-seconds",
        0.2,
        "--warmup",
        1,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "results.json").read_text())
    assert report["machine"]["cores"] >= 1 and "onnxruntime-gpu" in report["machine"]["versions"]
    rows = report["results"]
    assert [(r["batch_size"], r["device"], r["precision"]) for r in rows] == [
        (1, "cpu", "fp32"),
        (4, "cpu", "fp32"),
    ]
    for row in rows:
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["repetitions"] >= 10
        assert row["images_per_s"] == pytest.approx(row["batch_size"] / (row["p50_ms"] / 1000), rel=1e-6)
        assert row["size_mb"] == pytest.approx(tiny_model.stat().st_size / 2**20)
    markdown = (out / "results.md").read_text()
    assert "| tiny.onnx | fp32 | cpu | 4 |" in markdown and "images/s" in markdown
    for plot in ("throughput.png", "latency.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tiny.onnx" in result.stdout


def test_bench_refuses_baseline_without_run(tiny_model, tmp_path):
    result = skutag("bench", tiny_model, "--out", tmp_path, "--baseline", "torch")
    assert result.returncode == 2 and "--run" in result.stderr
