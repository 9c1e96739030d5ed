"""`skutag train --attributes` epoch by epoch (trainer.attribute_epochs): history.csv's per-head figures and
best_score, the best epoch picked by that score, the attribute loss in the head phase's train_loss, and a
best.safetensors written mid-run that carries its heads and exports."""

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
