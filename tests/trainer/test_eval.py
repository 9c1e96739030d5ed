"""`skutag eval` gives the training report's figures for a run dir, its .safetensors and the exported ONNX
file (same pixels, same metrics), lists unreadable files, and refuses labels the model does not know."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from skutag.trainer.config import TrainConfig
from skutag.trainer.evaluate import evaluate
from skutag.trainer.train import train

from skutag.cli import main
from skutag.errors import InputError

SAME = ("samples", "accuracy", "macro_f1", "misclassified")


@pytest.fixture(scope="module")
def cached_run(split_catalog, tmp_path_factory) -> Path:
    """Frozen backbone, cached features: the fast path, and the run the eval tests score again."""
    out = tmp_path_factory.mktemp("cached") / "run"
    train(
        TrainConfig(
            data=str(split_catalog), out=str(out), arch="resnet18", weights="none", freeze="backbone",
            augment="none", cache_features=True, head_solver="adam", epochs=3, lr=1e-2, batch_size=16, image_size=48, workers=0,
        )
    )  # fmt: skip
    return out


def run_eval(model: Path, data: Path, out: Path) -> dict:
    try:
        main(["eval", str(model), str(data), "--out", str(out), "--workers", "0"])
    except SystemExit as exc:  # main exits only on errors
        pytest.fail(f"skutag eval exited with {exc.code}")
    return json.loads((out / "metrics.json").read_text())


def test_eval_of_the_run_dir_and_its_safetensors_repeats_the_training_figures(
    cached_run, split_catalog, tmp_path
):
    trained = json.loads((cached_run / "metrics.json").read_text())
    for model in (cached_run, cached_run / "best.safetensors"):
        figures = run_eval(model, split_catalog, tmp_path / model.name)
        assert {k: figures[k] for k in SAME} == {k: trained[k] for k in SAME}
        assert figures["val_loss"] == pytest.approx(trained["val_loss"], abs=1e-4)
        report = tmp_path / model.name
        assert (report / "misclassified.csv").read_text() == (
            cached_run / "report" / "misclassified.csv"
        ).read_text()
        assert _png(report / "misclassified-gradcam.png")  # Grad-CAM of the mistakes, drawn by default


def _png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_training_report_has_gradcam_of_its_mistakes_and_eval_says_when_it_cannot(
    cached_run, split_catalog, tmp_path, capsys
):
    # a frozen random backbone at 48 px: the run has mistakes to explain
    assert len((cached_run / "report" / "misclassified.csv").read_text().splitlines()) > 1
    assert _png(cached_run / "report" / "misclassified-gradcam.png")
    main(["eval", str(cached_run), str(split_catalog), "--out", str(tmp_path / "off"), "--workers", "0",
          "--no-gradcam"])  # fmt: skip
    assert (tmp_path / "off" / "metrics.json").is_file()
    assert not (tmp_path / "off" / "misclassified-gradcam.png").exists()

    from skutag.exporter.graph import export_fp32
    from skutag.trainer.weights import load_trained

    onnx_path = tmp_path / "model.onnx"
    export_fp32(*load_trained(cached_run), onnx_path)
    run_eval(onnx_path, split_catalog, tmp_path / "onnx")  # default: the report, without Grad-CAM, said why
    assert "Grad-CAM needs the PyTorch weights" in capsys.readouterr().err
    assert not (tmp_path / "onnx" / "misclassified-gradcam.png").exists()
    with pytest.raises(SystemExit) as exited:  # --gradcam: required, refused before evaluating
        main(["eval", str(onnx_path), str(split_catalog), "--out", str(tmp_path / "required"), "--gradcam"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Grad-CAM needs the PyTorch weights" in err[0], err
    assert not (tmp_path / "required").exists()


@pytest.mark.parametrize(
    "input_kind",
    ["uint8", pytest.param("float", marks=pytest.mark.slow)],  # float: test_onnx_export.py
)
def test_eval_of_the_exported_onnx_matches_torch(cached_run, split_catalog, tmp_path, input_kind):
    from skutag.exporter.graph import export_fp32
    from skutag.trainer.weights import load_trained

    model, card = load_trained(cached_run)
    onnx_path = tmp_path / "model.onnx"
    export_fp32(model, card, onnx_path, input_kind=input_kind)
    torch_figures = run_eval(cached_run, split_catalog, tmp_path / "torch")
    onnx_figures = run_eval(onnx_path, split_catalog, tmp_path / "onnx")
    assert onnx_figures["samples"] == torch_figures["samples"]
    assert abs(onnx_figures["accuracy"] - torch_figures["accuracy"]) <= 1 / torch_figures["samples"]
    assert onnx_figures["val_loss"] == pytest.approx(torch_figures["val_loss"], rel=1e-3)
    assert onnx_figures["precision"] == "fp32" and len(onnx_figures["model_sha256"]) == 64


def test_unreadable_files_are_listed_and_unknown_labels_refused(cached_run, split_catalog, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(split_catalog / "val", data)
    first_class = sorted(p.name for p in data.iterdir())[0]
    (data / first_class / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    figures = evaluate(cached_run, data, tmp_path / "report", workers=0)
    skipped = (tmp_path / "report" / "skipped.csv").read_text().splitlines()
    assert len(skipped) == 2 and "broken.jpg" in skipped[1]
    assert figures["samples"] == 40 and figures["skipped"] == 1
    assert np.isfinite(figures["val_loss"])

    (data / "unknown_class").mkdir()
    shutil.copy(next((data / first_class).glob("*.jpg")), data / "unknown_class" / "x.jpg")
    with pytest.raises(InputError, match="unknown_class"):
        evaluate(cached_run, data, tmp_path / "report2", workers=0)
