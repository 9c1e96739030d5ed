"""`skutag explain`: Grad-CAM heatmaps exist, depend on the class explained, and cover a report's mistakes.

The heatmaps run in-process (torch imports once); the CLI is checked once, for its one-line error.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from skutag.trainer.explain import explain_images, explain_mistakes

from skutag.images import is_image_path
from tests.support.cli import skutag

CLASSES = ["boot", "cup", "lamp", "sock"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run dir holding a seeded random resnet18 at 128 px with its card (what explain reads of a run)."""
    import torch
    from skutag.trainer.model import build_model
    from skutag.trainer.weights import BEST, save_weights

    from skutag.card import ModelCard

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("explain") / "run"
    out.mkdir()
    card = ModelCard.for_training("resnet18", CLASSES, image_size=128)
    save_weights(out / BEST, build_model("resnet18", len(CLASSES)).eval(), card)
    return out


def test_heatmaps_exist_and_differ_between_classes(run, split_catalog, tmp_path):
    classes = CLASSES
    folders = sorted((split_catalog / "val").iterdir())
    images = [next(p for p in sorted(folder.iterdir()) if is_image_path(p)) for folder in folders[:2]]
    maps = {}
    for name in classes[:2]:
        out = tmp_path / name
        explain_images(run, [str(i) for i in images], out, target=name)
        for image in images:
            png = out / f"{image.stem}-gradcam.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            heatmap = np.load(out / f"{image.stem}-gradcam.npy")
            assert heatmap.shape == (128, 128) and heatmap.min() >= 0 and heatmap.max() <= 1
            maps[name, image.stem] = heatmap
        with open(out / "explanations.csv", newline="") as handle:
            assert [r["target"] for r in csv.DictReader(handle)] == [name, name]
    (a, b) = classes[:2]
    for image in images:  # the same image explained for two classes: two different heatmaps
        assert np.abs(maps[a, image.stem] - maps[b, image.stem]).max() > 0.05
    # two images of different classes explained for one class: different heatmaps too
    assert np.abs(maps[a, images[0].stem] - maps[a, images[1].stem]).max() > 0.05


def test_mistakes_contact_sheet(run, split_catalog, tmp_path):
    """The contact sheet of a report's misclassified.csv (the trainer's and `skutag eval`'s columns)."""
    report = tmp_path / "report"
    report.mkdir()
    images = sorted(p for p in (split_catalog / "val").rglob("*") if is_image_path(p))[:3]
    rows = [
        {"path": str(p), "true_label": "cup", "predicted_label": "lamp", "score": 0.9, "top3": "lamp:0.9"}
        for p in images
    ]
    with open(report / "misclassified.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert explain_mistakes(run, report, tmp_path) == tmp_path / "misclassified-gradcam.png"
    assert (tmp_path / "misclassified-gradcam.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_class_is_one_line(run, split_catalog, tmp_path):
    image = next(p for p in split_catalog.rglob("*") if is_image_path(p))
    result = skutag("explain", run, image, "--out", tmp_path, "--class", "no-such-class")
    assert result.returncode == 2 and "is not a class of this model" in result.stderr
