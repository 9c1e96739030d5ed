"""`skutag train --attributes`: one backbone, the label head and a head per attribute, trained end to end on a
tiny synthetic manifest, exported to ONNX and run by `skutag run`; the options refused with one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skutag.errors import InputError, SkutagError
from skutag.synth import SynthSpec, make_catalog

FAST = dict(arch="resnet18", weights="none", image_size=64, batch_size=16, workers=0, seed=0, gradcam=False)
COLOR = {0: "red", 1: "green", 2: "blue", 3: ""}  # class 3's photos have no colour: masked out
STYLE = {0: "print", 1: "zip", 2: "print|zip", 3: ""}  # multi-valued


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """80 photos of 4 classes with a split column, and a `color` (single) and `style` (multi) column."""
    root = tmp_path_factory.mktemp("attr-manifest")
    make_catalog(root / "photos", SynthSpec(count=80, classes=4, min_size=72, max_size=96, seed=3))
    classes = sorted(p.name for p in (root / "photos").iterdir() if p.is_dir())
    rows = []
    for c, name in enumerate(classes):
        files = sorted((root / "photos" / name).iterdir())
        for i, f in enumerate(files):
            split = "val" if i % 4 == 0 else "train"
            rows.append([f"photos/{name}/{f.name}", name, split, COLOR[c], STYLE[c]])
    path = root / "catalog.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split", "color", "style"], *rows])
    return path


def train_run(manifest: Path, out: Path, **options: object) -> Path:
    from skutag.trainer.config import TrainConfig
    from skutag.trainer.train import train

    return train(TrainConfig(data=str(manifest), out=str(out), attributes="color,style", **(FAST | options)))


@pytest.fixture(scope="module")
def run_dir(manifest, tmp_path_factory) -> Path:
    """Everything trains (random weights, 2 epochs): the minibatch path with the attribute loss."""
    return train_run(manifest, tmp_path_factory.mktemp("attr-train") / "run", freeze="none", epochs=2)


def test_the_run_has_a_head_per_attribute_with_figures(run_dir):
    from skutag.trainer.weights import load_trained, read_card

    card = read_card(run_dir / "best.safetensors")
    color, style = card.attributes
    assert (color.name, color.kind, color.values) == ("color", "single", ("blue", "green", "red"))
    assert (style.name, style.kind, style.values) == ("style", "multi", ("print", "zip"))
    assert style.thresholds is not None and len(style.thresholds) == 2 and color.temperature > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"accuracy", "macro_f1", "ece", "review"} <= set(metrics)  # the label's figures as before
    figures = metrics["attributes"]
    for name in ("color", "style"):
        assert {"accuracy", "macro_f1", "map", "micro_f1", "images", "missing"} <= set(figures[name])
    assert figures["color"]["images"] == 15 and figures["color"]["missing"] == 5  # class 3 is missing
    assert len(figures["color"]["confusion"]) == 3
    assert json.loads((run_dir / "card.json").read_text())["attributes"][0]["name"] == "color"
    model, _ = load_trained(run_dir)  # the weights match the card
    assert set(model.heads) == {"color", "style"}


def test_export_and_skutag_run_write_the_attribute_columns(run_dir, manifest, tmp_path):
    from skutag.exporter.pipeline import ExportRequest, run_export

    from tests.batchrun.support import run

    onnx = run_export(ExportRequest(source=run_dir, out=tmp_path / "model.onnx", check=False)).model
    out = tmp_path / "out"
    run(onnx, [manifest.parent / "photos"], out, workers=0)
    table = pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("part-*.parquet")))
    schema = table.schema
    assert schema.field("color").type == pa.string() and schema.field("color_score").type == pa.float32()
    assert schema.field("style").type == pa.list_(pa.string())
    assert schema.field("style_score").type == pa.list_(pa.float32())
    rows = table.to_pylist()
    assert len(rows) == 80 and all(r["color"] in ("blue", "green", "red") for r in rows)
    assert all(set(r["style"]) <= {"print", "zip"} for r in rows)
    # skutag eval of the run dir and of its ONNX file: the same attribute figures on the validation rows
    from skutag.trainer.evaluate import evaluate

    trained = json.loads((run_dir / "metrics.json").read_text())["attributes"]
    by_torch = evaluate(run_dir, manifest, tmp_path / "eval-run", workers=0, gradcam=False)["attributes"]
    by_onnx = evaluate(onnx, manifest, tmp_path / "eval-onnx", workers=0)["attributes"]
    for name in ("color", "style"):
        assert by_torch[name]["images"] == trained[name]["images"]
        for key in ("accuracy", "map", "micro_f1"):
            assert by_torch[name][key] == pytest.approx(trained[name][key], abs=1e-6), (name, key)
            assert by_onnx[name][key] == pytest.approx(by_torch[name][key], abs=0.06), (name, key)
    saved = json.loads((tmp_path / "eval-onnx" / "metrics.json").read_text())
    assert set(saved["attributes"]) == {"color", "style"}


def test_the_head_phase_fits_the_attribute_heads_on_cached_features(manifest, tmp_path):
    """The default L-BFGS head phase (frozen backbone, cached features) fits the attribute heads too."""
    from skutag.trainer.weights import load_trained

    run_dir = train_run(
        manifest, tmp_path / "run", freeze="backbone", cache_features=True, augment="none", epochs=1
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    model, card = load_trained(run_dir)
    assert [h.name for h in card.attributes] == ["color", "style"]
    assert float(model.heads["color"].weight.detach().abs().sum()) > 0
    # the synthetic classes decide colour: a head fitted on the features learns it above chance (1/3)
    assert metrics["attributes"]["color"]["accuracy"] > 0.5, metrics["attributes"]


def test_resume_refuses_other_attributes(run_dir, manifest):
    from skutag.trainer.config import TrainConfig
    from skutag.trainer.train import train

    config = TrainConfig(
        data=str(manifest), out=str(run_dir), attributes="color", resume=True, freeze="none", epochs=2, **FAST
    )
    with pytest.raises(SkutagError, match="--attributes was 'color,style'"):
        train(config)


def test_bad_attribute_options_are_one_line(manifest, tmp_path, capsys):
    from tests.support.cli import invoke

    for args, message in (
        (["--attributes", "color,Style"], "lowercase"),
        (["--attributes", "colour"], "no column colour"),
        (["--attributes", "style:single"], "say style:multi"),
    ):
        code, out, err = invoke(
            capsys, "train", str(manifest), "--out", str(tmp_path / "bad"), "--arch", "resnet18",
            "--weights", "none", "--epochs", "1", "--workers", "0", *args,
        )  # fmt: skip
        assert code == 2, out + err
        assert message in err and "Traceback" not in err
    with pytest.raises(InputError, match="manifest"):
        train_run(manifest.parent / "photos", tmp_path / "folder", epochs=1)
