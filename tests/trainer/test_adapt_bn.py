"""--adapt-bn: BatchNorm statistics become those of the given images; nothing else changes."""

from __future__ import annotations

import torch
from skutag.trainer.adapt_bn import adapt_batchnorm
from torch import nn


def batches(images: torch.Tensor, size: int):
    for start in range(0, len(images), size):
        chunk = images[start : start + size]
        yield {"image": chunk, "ok": torch.ones(len(chunk), dtype=torch.bool)}


def test_statistics_are_the_cumulative_ones_of_the_images():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, bias=False)
    norm = nn.BatchNorm2d(4, momentum=0.1)
    model = nn.Sequential(conv, norm).eval()
    weights = {
        k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k
    }
    images = torch.randn(24, 3, 16, 16) * 3 + 5

    seen = adapt_batchnorm(model, batches(images, 8), prepare=lambda x: x)

    with torch.no_grad():
        features = conv(images)
    assert seen == 24
    torch.testing.assert_close(norm.running_mean, features.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    # each batch contributes its unbiased variance; equal batch sizes make the average of those
    expected_var = torch.stack([features[i : i + 8].var(dim=(0, 2, 3)) for i in (0, 8, 16)]).mean(0)
    torch.testing.assert_close(norm.running_var, expected_var, rtol=1e-4, atol=1e-4)
    assert norm.momentum == 0.1 and not norm.training and not model.training
    for key, value in weights.items():
        torch.testing.assert_close(model.state_dict()[key], value)


def test_failed_rows_and_single_image_batches_are_left_out():
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    images = torch.randn(5, 3, 4, 4)
    ok = torch.tensor([True, False, True, True, True])
    stream = [{"image": images[:4], "ok": ok[:4]}, {"image": images[4:], "ok": ok[4:]}]
    assert adapt_batchnorm(model, stream, prepare=lambda x: x) == 3
    assert model.training  # restored
