"""The resolved training options: one dataclass, saved as RUN/config.json and inside last.ckpt and the card."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from skutag.errors import SkutagError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
BALANCE = ("none", "loss", "sampler")
AMP = ("auto", "bf16", "fp16", "off")


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    arch: str = "resnet50"
    weights: str = "imagenet"
    freeze: str = "backbone"
    unfreeze_at: int | None = None
    epochs: int = 30
    lr: float = 1e-4
    batch_size: int = 32
    image_size: int = 224
    val: str | None = None
    val_split: float | None = None
    augment: str = "standard"
    normalize: str = "imagenet"
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    clip_grad: float | None = None
    patience: int | None = None
    best_metric: str = "macro_f1"
    balance: str = "none"
    cache_features: bool = False
    adapt_bn: bool = False
    amp: str = "auto"
    device: str = "auto"
    workers: int | None = None
    seed: int = 0
    resume: bool = False
    gradcam: bool | None = None  # None: when the insight extra is installed (insight.explain.report_gradcam)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Option combinations that cannot work, refused before any data is read."""
        if self.cache_features:
            if self.freeze != "backbone" or self.unfreeze_at is not None:
                raise SkutagError("--cache-features needs --freeze backbone without --unfreeze-at")
            if self.augment != "none":
                raise SkutagError(
                    "--cache-features needs --augment none (cached features cannot be augmented per epoch)"
                )
            if self.balance == "sampler":
                raise SkutagError("--cache-features works with --balance loss, not sampler")
        if self.unfreeze_at is not None and not 1 < self.unfreeze_at <= self.epochs:
            raise SkutagError(f"--unfreeze-at must be an epoch from 2 to {self.epochs}")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise SkutagError("--warmup-epochs must be fewer than --epochs")
        if self.gradcam:
            from insight.explain import check_gradcam

            check_gradcam(self.out, wanted=True)  # the extra is missing: say so now, not after training


def default_workers() -> int:
    """DataLoader workers: up to 4, leaving one core for the training process."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))
