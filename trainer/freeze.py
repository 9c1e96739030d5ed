"""The freeze policy: which parameters train, and keeping the frozen part's BatchNorm in eval mode.

`backbone`: only the classifier head trains. `none`: everything trains. `STAGE` (a module
name such as `layer4`, `features.6` or timm's `blocks.5`): that module and everything registered
after it train, everything before is frozen. `auto` (`resolve_policy`): the last stage
(`default_stage`) for pretrained weights, `none` for random ones. torchvision and timm
register modules in forward order, so
the frozen part is a prefix of the network: its inputs never require grad and autograd
records nothing there (no saved activations, no backward), and its BatchNorm layers keep
their running statistics because they stay in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from skutag.trainer.model import classifier_name
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from skutag.errors import InputError


@dataclass(frozen=True)
class FreezeSummary:
    policy: str
    frozen: int  # parameters (elements)
    trainable: int


def apply_freeze(model: nn.Module, policy: str) -> FreezeSummary:
    """Set `requires_grad` per `policy`; returns how many parameter elements train."""
    if policy == "backbone":  # the head alone, wherever the model registers it
        head = head_prefixes(model)
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(head))
    else:
        trainable_from = _first_trainable(model, policy)
        training = False
        for name, param in model.named_parameters():
            training = training or name.startswith(trainable_from)
            param.requires_grad_(training)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return FreezeSummary(policy, frozen, trainable)


def resolve_policy(model: nn.Module, policy: str, pretrained: bool) -> str:
    """`auto` -> `default_stage(model)` with pretrained weights, `none` with random ones; others as given."""
    if policy != "auto":
        return policy
    return default_stage(model) if pretrained else "none"


def default_stage(model: nn.Module) -> str:
    """The module that starts the last stage: after timm's second-to-last feature stage (`blocks.5` in
    EfficientNet-Lite, `layer4` in ResNets), torchvision's `layer4`, or the last two `features` blocks."""
    info = getattr(model, "feature_info", None)
    if info:
        stages = [entry["module"] for entry in info]
        if len(stages) >= 2:
            previous = stages[-2]
            depth = previous.count(".") + 1
            seen = False
            for name, _ in model.named_parameters():
                inside = name.startswith(previous + ".")
                seen = seen or inside
                if seen and not inside:
                    return ".".join(name.split(".")[:depth])
    if hasattr(model, "layer4"):
        return "layer4"
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential) and len(features) > 2:
        return f"features.{len(features) - 2}"
    return "none"


def check_policy(model: nn.Module, policy: str) -> None:
    """Refuse (InputError, exit 2) a resolved policy that names no module of `model`, before any training."""
    if policy != "backbone":
        _first_trainable(model, policy)


def _first_trainable(model: nn.Module, policy: str) -> str:
    """Prefix of the first trainable parameter's name ('' = all)."""
    if policy == "none":
        return ""
    modules = dict(model.named_modules())
    if policy not in modules or not policy:
        stages = [name for name, _ in model.named_children()]
        raise InputError(
            f"--freeze {policy!r}: expected auto, backbone, none or a module name such as {stages}"
        )
    if not any(True for _ in modules[policy].parameters()):
        raise InputError(f"--freeze {policy!r}: that module has no parameters to train")
    return policy + "."


def set_train_mode(model: nn.Module, frozen_bn_stats: bool = False) -> None:
    """`model.train()`, except BatchNorm layers whose parameters are all frozen stay in eval mode, and
    with `frozen_bn_stats` every BatchNorm layer does (its affine parameters may still train)."""
    model.train()
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            params = list(module.parameters(recurse=False))
            if frozen_bn_stats or (params and not any(p.requires_grad for p in params)):
                module.eval()


def fully_frozen_backbone(model: nn.Module) -> bool:
    """True when only the classifier head has trainable parameters."""
    head = head_prefixes(model)
    return not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith(head))


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The names of the head's parameters start with one of these: the classifier's, or with attribute heads
    (trainer.multihead) the label head's and every attribute head's."""
    return tuple(getattr(model, "head_prefixes", ())) or (classifier_name(model) + ".",)
