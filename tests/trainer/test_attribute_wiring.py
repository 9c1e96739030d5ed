"""`skutag train --attributes` wired through what single-label training has: epoch by epoch
(trainer.attribute_epochs: history.csv's per-head figures and best_score, the best epoch picked by that score,
the attribute loss in the head phase's train_loss, a best.safetensors written mid-run that carries its heads
and exports) and the report's Grad-CAM of a chosen head (--gradcam-head)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from skutag.errors import InputError
from tests.trainer.test_attribute_training import FAST, manifest, train_run  # noqa: F401 (the fixture)


def history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_history_has_each_heads_figures_and_the_best_epoch_is_the_best_score(manifest, tmp_path):  # noqa: F811
    run = train_run(manifest, tmp_path / "run", freeze="none", epochs=2)
    rows = history(run)
    assert len(rows) == 2
    for name in ("color", "style"):
        for figure in ("accuracy", "macro_f1", "map"):
            assert 0 <= float(rows[0][f"attributes.{name}.{figure}"]) <= 1
    scores = [float(r["best_score"]) for r in rows]
    for row, score in zip(rows, scores, strict=True):  # the mean of the label's macro F1 and each head's map
        parts = [
            float(row["macro_f1"]),
            float(row["attributes.color.map"]),
            float(row["attributes.style.map"]),
        ]
        assert score == pytest.approx(sum(parts) / 3, abs=1e-9)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch"] == scores.index(max(scores)) + 1
    assert metrics["best_score"] == pytest.approx(max(scores)) and "map" in metrics["best_by"]


@pytest.mark.slow  # two training runs
def test_the_head_phase_train_loss_includes_the_attribute_loss(manifest, tmp_path):  # noqa: F811
    """The L-BFGS fits are the same whatever --attribute-weight is; the reported loss adds the heads' loss times it."""
    cached = dict(freeze="backbone", cache_features=True, augment="none", epochs=1)
    one = float(
        history(train_run(manifest, tmp_path / "w1", attribute_weight=1.0, **cached))[0]["train_loss"]
    )
    two = float(
        history(train_run(manifest, tmp_path / "w2", attribute_weight=2.0, **cached))[0]["train_loss"]
    )
    assert two - one > 0.05, (one, two)  # the attribute part (one's share) counted twice


def test_best_weights_written_mid_run_carry_the_heads_and_export(manifest, tmp_path):  # noqa: F811
    """After the first of two epochs best.safetensors is there with the heads in its card, and exports."""
    import onnx
    from skutag.exporter.pipeline import ExportRequest, run_export
    from skutag.trainer import distributed
    from skutag.trainer.config import TrainConfig
    from skutag.trainer.display import Display
    from skutag.trainer.train import Trainer
    from skutag.trainer.weights import read_card

    out = tmp_path / "run"
    config = TrainConfig(
        data=str(manifest), out=str(out), attributes="color,style", freeze="none", epochs=2, **FAST
    )
    process, device, _ = distributed.start("cpu")
    trainer = Trainer(config, process, device, Display(enabled=False))
    out.mkdir()
    trainer._epoch(1)  # noqa: SLF001 (one epoch, as run() calls it)
    card = read_card(out / "best.safetensors")
    assert [h.name for h in card.attributes] == ["color", "style"]
    assert all(h.temperature > 0 for h in card.attributes) and len(card.attributes[1].thresholds) == 2
    model = run_export(ExportRequest(source=out, out=tmp_path / "mid.onnx", check=False)).model
    outputs = [o.name for o in onnx.load(str(model)).graph.output]
    assert outputs[-2:] == ["attr.color", "attr.style"]


def test_val_loss_cannot_pick_the_best_epoch_with_attributes(manifest, tmp_path):  # noqa: F811
    with pytest.raises(InputError, match="val_loss"):
        train_run(manifest, tmp_path / "run", best_metric="val_loss", epochs=1)


def test_gradcam_head_explains_that_heads_mistakes(manifest, tmp_path):  # noqa: F811
    import numpy as np
    from skutag.trainer.explain import Explainer, explain_mistakes

    run = train_run(manifest, tmp_path / "run", freeze="none", epochs=1, gradcam=True, gradcam_head="color")
    report = run / "report"
    with open(report / "color-misclassified.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        assert reader.fieldnames == ["path", "true_label", "predicted_label", "target", "score"]
    assert all(r["target"] == r["predicted_label"] != r["true_label"] for r in rows)
    assert (report / "misclassified-gradcam.png").is_file()  # the label head's sheet as before
    if rows:  # the trainer drew the head's sheet
        assert (report / "color-misclassified-gradcam.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a sheet of the head's mistakes from its csv (as the trainer draws it when there are mistakes)
    photo = str(manifest.parent / "photos" / sorted((manifest.parent / "photos").iterdir())[0].name)
    photo = str(next(p for p in sorted(Path(photo).iterdir())))
    listed = tmp_path / "color-misclassified.csv"
    listed.write_text(f"path,true_label,predicted_label,target,score\n{photo},red,blue,blue,0.9\n")
    sheet = explain_mistakes(run, tmp_path, tmp_path / "sheet", head="color")
    assert sheet.name == "color-misclassified-gradcam.png" and sheet.read_bytes()[:4] == b"\x89PNG"
    # the heatmap is the head's: the same photo and output index explained for color and for the label differ
    head, label = Explainer(run, "color"), Explainer(run)
    pixels = head.pixels(photo)
    color_map, color_probs = head.heatmap(pixels, 0)
    label_map, _ = label.heatmap(pixels, 0)
    assert color_probs.shape == (3,) and abs(color_probs.sum() - 1) < 1e-5
    assert np.abs(color_map - label_map).max() > 0.05


def test_a_multi_heads_mistake_explains_a_value_given_wrongly_else_one_missed(tmp_path):
    """head_mistakes on a multi-valued head whose every photo is wrong (the truth is the complement of what it
    gives): the target is the most probable value given wrongly, or when it gives none the most probable missed."""
    import numpy as np
    import torch
    from skutag.trainer.attribute_epochs import head_mistakes
    from skutag.trainer.attributes import Encoded
    from skutag.trainer.features import CachedFeatures
    from skutag.trainer.head_calibration import probabilities
    from skutag.trainer.model import build_model
    from skutag.trainer.multihead import AttributeModel

    from skutag.heads import AttributeHead

    torch.manual_seed(0)
    model = AttributeModel.wrap(build_model("resnet18", 4, "none"), {"style": 3})
    head = AttributeHead("style", "multi", ("a", "b", "c"), (0.5, 0.5, 0.5))
    features = torch.randn(8, model.label_head.in_features) * 3
    with torch.no_grad():
        probs = probabilities("multi", model.logits(features)["style"].numpy())
    given = head.given(probs)
    truth = (~given).astype(np.float32)
    val = CachedFeatures(features, torch.zeros(8, dtype=torch.long), torch.arange(8), {})
    rows = head_mistakes(head, model, val, Encoded(truth, np.ones(8, bool)), [f"p{i}" for i in range(8)])
    assert len(rows) == 8
    for row in rows:
        i = int(row["path"][1:])
        pick = np.where(given[i] if given[i].any() else ~given[i], probs[i], -1).argmax()
        assert row["target"] == "abc"[pick] and row["score"] == pytest.approx(probs[i, pick])
        assert row["predicted_label"] == (
            "|".join(v for v, g in zip("abc", given[i], strict=True) if g) or "(none)"
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gradcam_head": "pattern"}, "not one of --attributes"),
        ({"gradcam_head": "style", "gradcam": False}, "--no-gradcam"),
    ],
)
def test_bad_gradcam_head_is_refused_before_training(manifest, tmp_path, options, message):  # noqa: F811
    with pytest.raises(InputError, match=message):
        train_run(manifest, tmp_path / "run", epochs=1, **options)


def test_a_bf16_autocast_epoch_trains_and_predicts_every_head():
    """trainer.loop's Engine under CPU autocast (bf16) with attribute heads: the loss adds the heads' part,
    it is finite, the weights move, and prediction keeps each head's logits in float."""
    import numpy as np
    import torch
    from skutag.trainer.loop import Engine
    from skutag.trainer.model import build_model
    from skutag.trainer.multihead import AttributeModel

    torch.manual_seed(0)
    model = AttributeModel.wrap(build_model("resnet18", 3, "none"), {"color": 4})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    seen = []

    def extra_loss(outputs, batch):
        seen.append(outputs["color"].dtype)
        return torch.nn.functional.cross_entropy(outputs["color"].float(), batch["label"])

    engine = Engine(optimizer, scheduler, torch.device("cpu"), lambda x: x, autocast_dtype=torch.bfloat16)
    engine.extra_loss = extra_loss
    batch = {
        "image": torch.randn(4, 3, 32, 32),
        "label": torch.tensor([0, 1, 2, 0]),
        "index": torch.arange(4),
        "ok": torch.ones(4, dtype=torch.bool),
        "error": [""] * 4,
    }
    before = model.heads["color"].weight.detach().clone()
    result = engine.train_epoch(model, [batch], lambda n: None)
    assert np.isfinite(result.loss) and seen == [torch.bfloat16]  # the heads ran under autocast
    assert not torch.equal(before, model.heads["color"].weight)
    predictions = engine.predict(model, [batch], lambda n: None, all_heads=True)
    assert predictions.heads["color"].shape == (4, 4) and predictions.heads["color"].dtype == np.float64
    assert predictions.probs.shape == (4, 3)


def without_label(source: Path, out: Path) -> Path:
    """The manifest less its label column: path, split, color (empty for class 3), style."""
    with open(source, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "split", "color", "style"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("path", "split", "color", "style")} for r in rows)
    return out


def test_a_manifest_without_label_trains_its_first_single_attribute_as_the_label_head(manifest, tmp_path):  # noqa: F811
    """No `label` column: `color` (the first single-valued attribute) is the label head, `style` a head beside
    it; export, `skutag run` (label / score hold the colour) and `skutag eval` of the manifest follow."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from skutag.exporter.pipeline import ExportRequest, run_export
    from skutag.trainer.evaluate import evaluate
    from skutag.trainer.weights import read_card

    from tests.batchrun.support import run as skutag_run

    data = without_label(manifest, manifest.parent / "no-label.csv")
    run = train_run(data, tmp_path / "run", freeze="none", epochs=1)
    card = read_card(run / "best.safetensors")
    assert card.classes == ("blue", "green", "red") and card.provenance["label_column"] == "color"
    assert [h.name for h in card.attributes] == ["style"]
    assert json.loads((run / "metrics.json").read_text())["samples"] == 15  # class 3's photos have no colour
    onnx = run_export(ExportRequest(source=run, out=tmp_path / "model.onnx", check=False)).model
    skutag_run(onnx, [manifest.parent / "photos"], tmp_path / "out", workers=0)
    table = pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / "out").glob("part-*.parquet")))
    assert (
        set(table.column("label").to_pylist()) <= {"blue", "green", "red"} and "style" in table.schema.names
    )
    assert "color" not in table.schema.names
    figures = evaluate(onnx, data, tmp_path / "eval", workers=0)
    assert figures["samples"] == 15 and set(figures["attributes"]) == {"style"}


def test_a_manifest_without_label_needs_a_single_valued_attribute(manifest, tmp_path):  # noqa: F811
    from skutag.trainer.config import TrainConfig
    from skutag.trainer.train import train

    data = without_label(manifest, tmp_path / "no-label.csv")
    config = TrainConfig(data=str(data), out=str(tmp_path / "run"), attributes="style", epochs=1, **FAST)
    with pytest.raises(InputError, match="no label column: one of --attributes must be single-valued"):
        train(config)
