"""The resolved training options: one dataclass, saved as RUN/config.json and inside last.ckpt and the card."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from skutag.card import DOMAIN_SCORE
from skutag.errors import InputError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
BALANCE = ("none", "loss", "sampler")
BN_STATS = ("auto", "frozen", "update")
AMP = ("auto", "bf16", "fp16", "off")
HEAD_EPOCHS = 40  # the default head-only phase with --head-solver adam (benchmarks/RESULTS.md: recipe)
# the review queue's out-of-distribution score (trainer.review): the card's "1-max-cosine", "stage-statistics"
OOD_SCORES = ("cosine", DOMAIN_SCORE)
HEAD_SOLVERS = ("lbfgs", "adam")  # lbfgs: one epoch fits the head to its optimum (trainer.head_fit)
# the views of the head's cache: the flipped copy did not pay with the L-BFGS head (RESULTS.md, model_table)
CACHE_VIEWS = "center"


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    arch: str = "timm/tf_efficientnet_lite0"  # ImageNet weights from a core dependency: trains offline
    weights: str = "imagenet"
    # auto: pretrained weights -> the last stage trains (trainer.freeze.default_stage), random -> none
    freeze: str = "auto"
    unfreeze_at: int | None = None
    # The first N epochs train the head alone on cached backbone features; None: auto (with pretrained
    # weights 1 L-BFGS fit or HEAD_EPOCHS Adam epochs, 0 with random ones)
    head_epochs: int | None = None
    head_solver: str = "lbfgs"
    epochs: int = 11  # with pretrained weights: one L-BFGS fit of the head, then up to 10 of fine-tuning
    # The views of every training photo in the head's feature cache (trainer.views)
    cache_views: str = CACHE_VIEWS
    # Fine-tuning stops once this many epochs in a row bring no better validation figure than the best so
    # far, the head's included (trainer.recipe); 0: every epoch runs
    tune_patience: int = 1
    # A fine-tuning epoch beats the best so far only by more than this; None: one validation image's worth
    tune_margin: float | None = None
    # When the best weights are the head's (fine-tuning did not pay), refit the L-BFGS head on the training
    # and validation features before saving (trainer.head_fit); calibration stays the validation's
    refit: bool = True
    lr: float = 1e-3  # the head's; the backbone's is lr x backbone_lr_scale
    backbone_lr_scale: float = 0.1  # the backbone's learning rate is lr x this (the head's is lr)
    # BatchNorm running statistics while fine-tuning: auto = frozen with pretrained weights (a small
    # catalog's batches would overwrite ImageNet's statistics), updated with random ones
    bn_stats: str = "auto"
    batch_size: int = 32
    image_size: int | None = None  # None: the weights' own (torchvision 224, timm pretrained_cfg)
    val: str | None = None
    val_split: float | None = None
    # --val-split by product (trainer.groups): a manifest COLUMN or prefix:SEP of the file name; None: by photo
    split_by: str | None = None
    augment: str = "standard"
    normalize: str = "auto"  # auto: what the weights were trained with
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: int = 0
    label_smoothing: float = 0.1
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
    decisions: tuple[str, ...] = ()  # OUTs whose review decisions (OUT/_review/) join the training set
    gradcam: bool | None = None  # None: when the insight extra is installed (insight.explain.report_gradcam)
    # an attribute head whose worst validation mistakes the report's Grad-CAM also explains (trainer.explain)
    gradcam_head: str | None = None
    review_rate: float = 0.10  # the review queue's target flag rate on validation (trainer.review)
    # the review queue's out-of-distribution score (trainer.review, REVIEW_SCORES): the class-mean cosine, or the
    # Gaussian of the backbone stages' feature statistics (fp32/fp16 exports only: it does not survive int8)
    ood_score: str = OOD_SCORES[0]
    # `color,pattern,style:multi`: one head per manifest column beside the label head (trainer.attribute_training)
    attributes: str | None = None
    attribute_weight: float = 1.0  # each attribute head's loss is multiplied by this

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"

    def frozen_bn_stats(self) -> bool:
        """True when every BatchNorm layer keeps its running statistics (eval mode) while training."""
        return self.bn_stats == "frozen" or (self.bn_stats == "auto" and self.pretrained)

    def resolved_head_epochs(self) -> int:
        """Epochs of the head-only phase on cached features (all of them with --cache-features)."""
        if self.cache_features:
            return self.epochs
        if self.head_epochs is not None:
            return self.head_epochs
        default = 1 if self.head_solver == "lbfgs" else HEAD_EPOCHS
        return min(default, self.epochs - 1) if self.pretrained and self.freeze != "backbone" else 0

    def check(self) -> None:
        """Option combinations that cannot work, refused before any data is read."""
        from skutag.trainer.views import parse_views

        try:
            parse_views(self.cache_views)
        except ValueError as exc:
            raise InputError(f"--cache-views: {exc}") from None
        if self.head_solver not in HEAD_SOLVERS:
            raise InputError(
                f"--head-solver must be one of {', '.join(HEAD_SOLVERS)}, not {self.head_solver!r}"
            )
        if self.split_by is not None:
            from skutag.trainer.groups import SplitBy

            SplitBy.parse(self.split_by)
            if self.val_split is None:
                raise InputError("--split-by splits DATA by product for --val-split F; pass --val-split too")
        if self.tune_margin is not None and self.tune_margin < 0:
            raise InputError("--tune-margin must be 0 or more")
        if self.tune_patience < 0:
            raise InputError("--tune-patience must be 0 (off) or more")
        if self.bn_stats not in BN_STATS:
            raise InputError(f"--bn-stats must be one of {', '.join(BN_STATS)}, not {self.bn_stats!r}")
        if self.cache_features:
            if self.freeze not in ("backbone", "auto") or self.unfreeze_at is not None:
                raise InputError("--cache-features needs --freeze backbone without --unfreeze-at")
            if self.augment != "none":
                raise InputError(
                    "--cache-features needs --augment none (cached features cannot be augmented per epoch)"
                )
            if self.balance == "sampler":
                raise InputError("--cache-features works with --balance loss, not sampler")
        if self.head_epochs is not None and self.head_epochs > 0:
            if self.head_epochs >= self.epochs:
                raise InputError("--head-epochs must be fewer than --epochs (or use --cache-features)")
            if self.balance == "sampler":
                raise InputError("--head-epochs works with --balance loss, not sampler")
        if self.unfreeze_at is not None and not 1 < self.unfreeze_at <= self.epochs:
            raise InputError(f"--unfreeze-at must be an epoch from 2 to {self.epochs}")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise InputError("--warmup-epochs must be fewer than --epochs")
        if self.attributes is not None:
            from skutag.trainer.attributes import parse_attributes

            parse_attributes(self.attributes)
            if not self.attribute_weight > 0:
                raise InputError("--attribute-weight must be above 0")
            names = [spec.name for spec in parse_attributes(self.attributes)]
            if self.gradcam_head is not None and self.gradcam_head not in names:
                raise InputError(
                    f"--gradcam-head {self.gradcam_head!r} is not one of --attributes ({', '.join(names)})"
                )
            if self.best_metric == "val_loss":
                raise InputError(
                    "--best-metric val_loss cannot be averaged with the attribute heads' map that picks the best "
                    "epoch with --attributes; use macro_f1, accuracy or top5_accuracy"
                )
        if self.gradcam_head is not None and self.attributes is None:
            raise InputError("--gradcam-head names one of the --attributes heads; pass --attributes")
        if self.gradcam_head is not None and self.gradcam is False:
            raise InputError("--gradcam-head draws a Grad-CAM sheet; it cannot go with --no-gradcam")
        if self.gradcam:
            from skutag.trainer.explain import check_gradcam

            check_gradcam(self.out, wanted=True)  # the extra is missing: say so now, not after training


def default_of(name: str) -> Any:
    """TrainConfig's default for field `name` (the CLI shows and uses it: one declaration)."""
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)


def default_workers() -> int:
    """DataLoader workers: up to 4, leaving one core for the training process."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))
