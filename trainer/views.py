"""The fixed views of a training photo that the head's feature cache holds (`--cache-views`).

A head trained on cached features sees each photo as the backbone sees it once; caching
several deterministic views instead (the photo flipped, seen whole, seen closer) gives the
head augmented features at the price of one backbone pass per view, paid once. Each view
is computed from the photo decoded once with its shorter side at the card's resize_size:

- `center`: the centre image_size crop (the eval pixels, to within one of rounding)
- `flip`: `center`, mirrored left to right
- `wide`: the shorter side at image_size, centre crop: the whole width of a square photo
- `wide-flip`: `wide`, mirrored
- `zoom`: the centre 80% of `center`, resized back to image_size
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from skutag.trainer.data import CatalogDataset
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

VIEWS = ("center", "flip", "wide", "wide-flip", "zoom")
ZOOM = 0.8


def parse_views(text: str) -> tuple[str, ...]:
    """`center,flip` -> ('center', 'flip'); raises ValueError naming the known views."""
    views = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in views if v not in VIEWS]
    if not views or unknown:
        raise ValueError(f"unknown view(s) {unknown or [text]}; expected a comma list of {', '.join(VIEWS)}")
    if len(set(views)) != len(views):
        raise ValueError(f"a view is named twice in {text!r}")
    return views


def view(image: torch.Tensor, name: str, image_size: int) -> torch.Tensor:
    """One view (uint8 CHW, image_size square) of `image` (uint8 CHW, shorter side >= image_size)."""
    if name in ("wide", "wide-flip"):
        image = F.resize(image, image_size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    out = F.center_crop(image, [image_size, image_size])
    if name == "zoom":
        inner = round(image_size * ZOOM)
        out = F.center_crop(out, [inner, inner])
        out = F.resize(
            out, [image_size, image_size], interpolation=InterpolationMode.BILINEAR, antialias=True
        )
    if name.endswith("flip"):
        out = F.horizontal_flip(out)
    return out


class ViewsDataset(Dataset):
    """`CatalogDataset` whose `image` is the stack of `views` of each photo: uint8 [V, 3, S, S]."""

    def __init__(self, base: CatalogDataset, views: Sequence[str]) -> None:
        if base.transform is not None:
            raise ValueError("ViewsDataset needs a CatalogDataset without a transform")
        self.base, self.views = base, tuple(views)
        self.size = base.card.image_size
        index = {sample.label: label for sample, label in zip(base.samples, base.labels, strict=True)}
        self.resized = CatalogDataset(base.samples, index, base.card, transform=_identity)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.resized[index]  # shorter side at resize_size, not cropped
        image = item["image"]
        if not item["ok"]:
            image = torch.zeros(3, self.size, self.size, dtype=torch.uint8)
        item["image"] = torch.stack([view(image, name, self.size) for name in self.views])
        return item


def flat_views(batches: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """`ViewsDataset` batches as plain ones: [B, V, 3, S, S] -> [B*V, 3, S, S], per-photo fields repeated."""
    for batch in batches:
        count = batch["image"].shape[1]
        yield {
            "image": batch["image"].flatten(0, 1),
            "label": batch["label"].repeat_interleave(count),
            "index": batch["index"].repeat_interleave(count),
            "ok": batch["ok"].repeat_interleave(count),
            "error": [e for e in batch["error"] for _ in range(count)],
        }


def _identity(image: torch.Tensor) -> torch.Tensor:
    return image
