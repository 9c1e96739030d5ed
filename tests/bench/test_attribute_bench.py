"""`skutag bench` on a model with attribute heads: its single-label twin is timed beside it."""

from __future__ import annotations

import json

import onnx

from tests.support.cli import skutag


def test_bench_times_the_label_only_twin(attribute_run, tmp_path):
    from skutag.exporter.graph import export_fp32
    from skutag.trainer.weights import load_trained

    from skutag.bench.heads import label_only

    model, card = load_trained(attribute_run[0])
    path = tmp_path / "heads.onnx"
    export_fp32(model, card, path)
    twin = label_only(path, tmp_path)
    proto = onnx.load(str(twin))
    assert [o.name for o in proto.graph.output] == ["probs"]
    assert not any(n.op_type == "Sigmoid" for n in proto.graph.node)  # the heads' nodes are gone
    out = tmp_path / "bench"
    result = skutag("bench", path, "--out", out, "--batch-sizes", "4", "--device", "cpu", "--min-seconds", 0.2,
                    "--warmup", 1)  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [(r["artifact"], r["heads"]) for r in rows] == [("heads.onnx", 2), ("heads.onnx (label only)", 0)]
    assert all(r["images_per_s"] > 0 for r in rows)
