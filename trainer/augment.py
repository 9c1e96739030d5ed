"""Training augmentation presets (torchvision.transforms.v2 on uint8 CHW tensors) and normalisation.

The dataset has already resized the shorter side to the card's resize_size; a preset
crops to image_size and augments. `none` has no transform: the dataset then gives the
exact evaluation pixels (resize + centre crop by `skutag.images`), the same every epoch,
which is what --cache-features needs. Normalisation runs on the whole batch on the device
(`Normalizer`), with the mean and std recorded in the card, so exported models and
batchrun apply exactly the same figures.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2

from skutag.card import ModelCard
from skutag.normalize import normalize, pixel_scale

PRESETS = ("none", "standard", "strong")


class StandardAugment(v2.Compose):
    """Random crop + horizontal flip (the classic ImageNet fine-tuning recipe)."""

    def __init__(self, image_size: int) -> None:
        super().__init__([v2.RandomCrop(image_size), v2.RandomHorizontalFlip()])


class StrongAugment(v2.Compose):
    """Standard + vertical flip, rotation, colour jitter, TrivialAugment, Gaussian noise, random erasing.

    Returns float32 in [0, 1] (noise and erasing work on floats).
    """

    def __init__(self, image_size: int) -> None:
        super().__init__(
            [
                v2.RandomCrop(image_size),
                v2.RandomHorizontalFlip(),
                v2.RandomVerticalFlip(),
                v2.RandomRotation(15),
                v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03),
                v2.TrivialAugmentWide(),
                v2.ToDtype(torch.float32, scale=True),
                v2.GaussianNoise(sigma=0.03),
                v2.RandomErasing(p=0.25),
            ]
        )


def train_transform(preset: str, image_size: int) -> v2.Compose | None:
    """The preset's transform; None for `none`: training then sees exactly the eval (batchrun) pixels."""
    classes = {"standard": StandardAugment, "strong": StrongAugment}
    if preset == "none":
        return None
    if preset not in classes:
        raise ValueError(f"unknown augmentation preset {preset!r}; expected one of {PRESETS}")
    return classes[preset](image_size)


class Normalizer(nn.Module):
    """uint8 (0-255) or float (0-1) NCHW batch -> float32 normalised with the card's mean and std."""

    def __init__(self, card: ModelCard) -> None:
        super().__init__()
        mean, std = pixel_scale(card.mean, card.std)
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("std", torch.from_numpy(std))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() if images.dtype == torch.uint8 else images.float() * 255.0
        return normalize(x, self.mean, self.std)
