"""Fixtures of the pages' tests: two nights over the real photos in demo/photos (two models that disagree)."""

from __future__ import annotations

from pathlib import Path

import pytest
from skutag.batchrun.api import run_catalog
from skutag.batchrun.options import RunOptions

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT / "demo" / "photos" / "test"
CLASSES = sorted(p.name for p in (ROOT / "demo" / "photos" / "train").iterdir() if p.is_dir())


def photo_model(path: Path, seed: int) -> Path:
    """A resnet18 at 64 px over the demo classes (random weights, `seed`) with a review section that flags
    a part of the photos; exported to ONNX with its card."""
    import numpy as np
    import torch
    from skutag.exporter.graph import export_fp32
    from skutag.trainer.model import build_model

    from skutag.card import ModelCard

    torch.manual_seed(seed)
    means = np.abs(np.random.default_rng(seed).standard_normal((len(CLASSES), 512)))
    review = {
        "score": "1-max-cosine",
        "class_means": (means / np.linalg.norm(means, axis=1, keepdims=True)).tolist(),
        "ood_threshold": 0.3,
        "tpr": 0.95,
        "confidence_threshold": 0.3,
    }
    card = ModelCard.for_training("resnet18", CLASSES, image_size=64).replace(review=review)
    export_fp32(build_model("resnet18", len(CLASSES)).eval(), card, path, embeddings=True)
    return path


def night(model: Path, out: Path, since: Path | None = None) -> Path:
    run_catalog(
        str(model), [str(PHOTOS)], str(out), RunOptions(workers=1, since=str(since) if since else None)
    )
    return out


@pytest.fixture(scope="session")
def nights(tmp_path_factory) -> tuple[Path, Path]:
    """(last night, tonight): the demo test photos tagged by two different random models."""
    root = tmp_path_factory.mktemp("nights")
    before = night(photo_model(root / "a.onnx", 0), root / "before")
    tonight = night(photo_model(root / "b.onnx", 1), root / "tonight")
    return before, tonight
