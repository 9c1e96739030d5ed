"""Build a torchvision classifier by name with a new head, from ImageNet, random or local weights.

The model stays a plain torchvision module, so `best.safetensors` loads with
`strict=True` into `torchvision.models.get_model(arch, num_classes=K)` anywhere.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import torch
from torch import nn

from skutag.errors import InputError, SkutagError

log = logging.getLogger(__name__)


def available_archs() -> list[str]:
    from torchvision import models

    return sorted(models.list_models(module=models))


def classifier_name(model: nn.Module) -> str:
    """Qualified name of the final Linear layer (the classifier head): `fc`, `classifier.1`, `heads.head`, ..."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise SkutagError(f"{type(model).__name__} has no Linear classifier to replace")
    return names[-1]


def build_model(arch: str, num_classes: int, weights: str = "none") -> nn.Module:
    """`weights`: `imagenet` (torchvision's weights API: network or its cache), `none`, or a file path."""
    from torchvision import models

    if arch not in models.list_models(module=models):
        import difflib

        close = difflib.get_close_matches(arch, available_archs(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SkutagError(f"unknown --arch {arch!r}{hint}")
    if weights == "imagenet":
        model = _imagenet_model(arch)
        _replace_head(model, num_classes)
        return model
    model = models.get_model(arch, weights=None, num_classes=num_classes)
    if weights != "none":
        load_backbone(model, weights)
    return model


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
        raise SkutagError(
            f"cannot get ImageNet weights {default} for {arch}: not in torch's cache ({cache}) and the download "
            f"failed ({type(exc).__name__}); use --weights none or --weights PATH"
        ) from exc


def _replace_head(model: nn.Module, num_classes: int) -> None:
    name = classifier_name(model)
    old = model.get_submodule(name)
    if old.out_features != num_classes:
        model.set_submodule(name, nn.Linear(old.in_features, num_classes))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from `.safetensors`, or a `.pth`/`.pt` state dict loaded with `weights_only=True`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(
            f"cannot read weights {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a skutag last.ckpt
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} is not a state dict of tensors")
    return state


def load_backbone(model: nn.Module, path: str | Path) -> None:
    """Load weights; a classifier head of another class count is skipped (transfer learning), nothing else is."""
    state = read_state_dict(path)
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
