"""`skutag predict`: top-k per image from an ONNX file, a run dir and an edge file, errors as rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.cli import skutag


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.png"):
        Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)).save(root / name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


@pytest.fixture(scope="module")
def same_model(tmp_path_factory) -> tuple[Path, Path]:
    """One network twice: a run dir (best.safetensors with its card) and its ONNX export."""
    import torch
    from skutag.exporter.graph import export_fp32
    from skutag.trainer.model import build_model
    from skutag.trainer.weights import save_weights

    from skutag.card import ModelCard

    torch.manual_seed(3)
    model = build_model("resnet18", 4).eval()
    card = ModelCard.for_training("resnet18", ["boot", "cup", "lamp", "sock"], image_size=32)
    run = tmp_path_factory.mktemp("run")
    save_weights(run / "best.safetensors", model, card)
    onnx_path = run.parent / "same.onnx"
    export_fp32(model, card, onnx_path)
    return run, onnx_path


def test_onnx_json_top_k_and_error_rows(tiny_model, photos):
    result = skutag("predict", tiny_model, photos / "a.jpg", photos / "broken.jpg", "--json", "--top-k", "2")
    assert result.returncode == 3, result.stderr  # some images were not predicted
    rows = json.loads(result.stdout)
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert len(rows[0]["labels"]) == 2 and set(rows[0]["labels"]) <= {"boot", "cup", "lamp", "sock"}
    assert rows[0]["scores"] == sorted(rows[0]["scores"], reverse=True) and 0 < sum(rows[0]["scores"]) <= 1
    assert rows[1]["error_kind"] in ("corrupt", "truncated", "not_image")
    assert "Traceback" not in result.stderr


def test_table_names_every_image_and_a_folder_expands(tiny_model, photos):
    result = skutag("predict", tiny_model, photos, "--top-k", "1")
    assert result.returncode == 3
    for name in ("a.jpg", "b.png", "broken.jpg"):
        assert name in result.stdout
    assert "error (" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_run_dir_and_its_onnx_export_agree(same_model, photos):
    run, onnx_path = same_model
    images = [photos / "a.jpg", photos / "b.png"]
    from_run = json.loads(skutag("predict", run, *images, "--json", "--top-k", "4").stdout)
    from_onnx = json.loads(skutag("predict", onnx_path, *images, "--json", "--top-k", "4").stdout)
    for a, b in zip(from_run, from_onnx, strict=True):
        assert a["labels"][0] == b["labels"][0]
        np.testing.assert_allclose(
            [a["scores"][a["labels"].index(x)] for x in b["labels"]], b["scores"], atol=1e-4
        )


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("model.ort", b"ORTM", "ONNX Runtime (.ort) file"),
        ("model.pte", b"\x00" * 64, "no skutag report beside it"),
        ("notes.onnx", b"hello, not a model", "cannot load ONNX model"),
    ],
)
def test_what_is_not_a_skutag_model_is_one_line_exit_2(tmp_path, photos, name, content, words):
    model = tmp_path / name
    model.write_bytes(content)
    result = skutag("predict", model, photos / "a.jpg")
    assert result.returncode == 2, result.stderr
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_model_without_a_card_points_at_run(tmp_path, photos):
    import torch

    path = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 2, 3), (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False)
    result = skutag("predict", path, photos / "a.jpg")
    assert result.returncode == 2 and "no skutag card" in result.stderr


def test_an_edge_file_runs_in_its_own_runtime(tmp_path, same_model, photos):
    pytest.importorskip("openvino")
    run, onnx_path = same_model
    xml = tmp_path / "m.xml"
    assert skutag("export", run, "--format", "openvino", "--out", xml).returncode == 0
    rows = json.loads(skutag("predict", xml, photos / "a.jpg", "--json").stdout)
    reference = json.loads(skutag("predict", onnx_path, photos / "a.jpg", "--json").stdout)
    assert rows[0]["labels"][0] == reference[0]["labels"][0]
