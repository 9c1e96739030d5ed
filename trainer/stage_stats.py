"""Feature statistics of a backbone's stages: what the review queue's domain score reads (issue 29).

The pooled final features that the class-mean cosine reads partly discard the domain (a studio photo
on white against a home photo of the same garment); the early stages keep it. Per stage output
[N, C, H, W], the statistics are the per-channel mean and log standard deviation over the positions
(log(std + 1e-6), std with Bessel's correction as `torch.std`; exported, the std is a ReduceMean of
squared deviations, so every path from the score back to a stage passes a ReduceMean, where an int8
export's float tail stops: exporter.tail; the convolutions stay 8-bit), concatenated stage by stage in
`stage_names` order: [N, 2 x sum(C)]. benchmarks/experiments/review_queue.py measured a Gaussian of
them (trainer.review.domain_fit) against the cosine (RESULTS.md, "Review queue and calibration").

`stage_names` knows the timm EfficientNet / MobileNet layout (`bn1`, then `blocks.0` ...) and the
torchvision ResNet one (`layer1` ... `layer4`); another model has none (an empty tuple). `StageTaps`
records those stages' outputs by forward hooks while the model runs (they trace into an exported
graph as ordinary operators).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

EPSILON = 1e-6
# best.safetensors keeps the domain Gaussian (trainer.review.domain_fit) beside the model's weights under
# these keys (`review.domain.mean` ...); it is no part of the model's state dict, so loaders split it off.
DOMAIN_PREFIX = "review.domain."
DOMAIN_KEYS = ("mean", "basis", "weights", "rest")


def domain_tensors(fit: dict) -> dict[str, torch.Tensor]:
    """The Gaussian's arrays as float32 tensors under DOMAIN_PREFIX (what save_weights adds)."""
    return {
        DOMAIN_PREFIX + k: torch.tensor(np.atleast_1d(np.asarray(fit[k], np.float32))) for k in DOMAIN_KEYS
    }


def split_domain(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(the model's own state, the domain Gaussian as numpy arrays or None) of a weights file's tensors."""
    own = {k: v for k, v in state.items() if not k.startswith(DOMAIN_PREFIX)}
    if len(own) == len(state):
        return state, None
    fit = {k: state[DOMAIN_PREFIX + k].numpy() for k in DOMAIN_KEYS if DOMAIN_PREFIX + k in state}
    if len(fit) != len(DOMAIN_KEYS):
        raise ValueError(f"the weights hold part of the domain Gaussian: {sorted(fit)}")
    fit["rest"] = float(fit["rest"].reshape(-1)[0])
    return own, fit


def stage_root(model: nn.Module) -> nn.Module:
    """The plain classifier under the wrappers the trainer puts around it (DDP's `module`, torch.compile's
    `_orig_mod`, an attribute model's `body`: trainer.multihead): `stage_names` are relative to it."""
    for name in ("module", "_orig_mod"):
        model = getattr(model, name, model)
    body = getattr(model, "body", None)
    return body if isinstance(body, nn.Module) and hasattr(model, "label_head") else model


def stage_names(model: nn.Module) -> tuple[str, ...]:
    """The submodules whose outputs are tapped, in order; () for a layout this module does not know."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and isinstance(getattr(model, "bn1", None), nn.Module):
        return ("bn1", *(f"blocks.{i}" for i in range(len(blocks))))
    layers = [f"layer{i}" for i in range(1, 5)]
    if all(isinstance(getattr(model, n, None), nn.Module) for n in layers):
        return tuple(layers)
    return ()


def statistics(outputs: list[torch.Tensor]) -> torch.Tensor:
    """Per row: each output's per-channel mean and log standard deviation over H x W, concatenated."""
    parts = []
    for out in outputs:
        flat = out.float().flatten(2)
        parts += [flat.mean(dim=2), torch.log(flat.std(dim=2) + EPSILON)]
    return torch.cat(parts, dim=1)


class StageTaps:
    """Forward hooks on `names` of `model`: after a forward pass, `statistics()` gives [N, S].

    Use as a context manager (the hooks are removed on exit), or `attach()` / `detach()`.
    """

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        if not names:
            raise ValueError("no stages to tap")
        self.modules = [model.get_submodule(n) for n in names]
        self.outputs: list[torch.Tensor] = []
        self.handles: list = []

    def attach(self) -> StageTaps:
        self.handles = [m.register_forward_hook(self._keep) for m in self.modules]
        return self

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def __enter__(self) -> StageTaps:
        return self.attach()

    def __exit__(self, *_exc: object) -> None:
        self.detach()

    def _keep(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        self.outputs.append(output)

    def statistics(self) -> torch.Tensor:
        """The statistics of the last forward pass (the recorded outputs are then cleared)."""
        if len(self.outputs) != len(self.modules):
            raise RuntimeError(f"expected {len(self.modules)} stage outputs, got {len(self.outputs)}")
        stats = statistics(self.outputs)
        self.outputs = []
        return stats


class DomainDistance(nn.Module):
    """The low-rank Mahalanobis distance of stage statistics [N, S] to a fitted Gaussian, in torch:
    what skutag.review_stats.domain_scores computes, as graph operators (the exporter's `domain_score`
    output is meant to be this over `StageTaps.statistics()`; docs/design.md, "The domain score").
    `fit`: trainer.review.domain_fit's arrays, kept as float32 buffers."""

    def __init__(self, fit: dict) -> None:
        super().__init__()
        for key in ("mean", "basis", "weights"):
            self.register_buffer(key, torch.as_tensor(fit[key], dtype=torch.float32).clone())
        self.rest = float(fit["rest"])

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        d = stats.float() - self.mean
        return (d * d).sum(dim=1) / self.rest + ((d @ self.basis) ** 2 * self.weights).sum(dim=1)
