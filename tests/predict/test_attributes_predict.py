"""`skutag predict` shows every attribute head: from a run dir (PyTorch) and its ONNX export alike."""

from __future__ import annotations

import json

import pytest

from tests.support.cli import skutag


@pytest.fixture(scope="module")
def onnx_file(attribute_run, tmp_path_factory):
    from skutag.exporter.graph import export_fp32
    from skutag.trainer.weights import load_trained

    model, card = load_trained(attribute_run[0])
    path = tmp_path_factory.mktemp("attr-predict") / "model.onnx"
    export_fp32(model, card, path)
    return path


def test_run_dir_and_onnx_show_the_same_attributes(attribute_run, onnx_file, small_catalog):
    run, card = attribute_run
    images = sorted(small_catalog.rglob("*.jpg"))[:3]
    shown = {}
    for model in (run, onnx_file):
        result = skutag("predict", model, *images, "--json")
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)
        assert all(set(r["attributes"]) == {"color", "style"} for r in rows)
        for row in rows:
            color = row["attributes"]["color"]
            assert len(color) == 1 and color[0]["value"] in card.attributes[0].values  # single: its top-1
            scores = [v["score"] for v in row["attributes"]["style"]]
            assert scores == sorted(scores, reverse=True)
        shown[str(model)] = [{n: [v["value"] for v in vs] for n, vs in r["attributes"].items()} for r in rows]
    assert shown[str(run)] == shown[str(onnx_file)]
    table = skutag("predict", onnx_file, images[0])
    assert table.returncode == 0 and "color" in table.stdout and "style" in table.stdout
