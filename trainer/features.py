"""The frozen-backbone fast paths: the backbone under `torch.no_grad`, and `--cache-features`.

`split_head` views a torchvision classifier as (body, head) sharing the same parameters:
the body is the model with its final Linear replaced by Identity (a shallow copy, the
original keeps its head), so training the head trains the model that is saved.
`FrozenBackboneClassifier` runs the body without autograd and the head with it;
`extract_features` runs the body once over a loader for the cached path (and, given the stages, keeps
each row's stage statistics beside its features: the review queue's domain score, trainer.stage_stats).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from skutag.trainer.model import classifier_name
from skutag.trainer.stage_stats import StageTaps, stage_root
from torch import nn


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(body, head): body(x) gives the head's input features; both share `model`'s parameters."""
    path = classifier_name(model).split(".")
    body = copy.copy(model)
    parent = body
    for name in path[:-1]:  # copy the module chain down to the head so the original is untouched
        parent._modules = dict(parent._modules)
        child = copy.copy(parent._modules[name])
        parent._modules[name] = child
        parent = child
    parent._modules = dict(parent._modules)
    head = parent._modules[path[-1]]
    parent._modules[path[-1]] = nn.Identity()
    return body, head


class FrozenBackboneClassifier(nn.Module):
    """The model with its frozen backbone run under `torch.no_grad` (only the head is differentiated)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        body, head = split_head(model)
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.body(x)
        return self.head(features)


@dataclass
class CachedFeatures:
    features: torch.Tensor  # float32 [N, D] on the CPU
    labels: torch.Tensor  # int64 [N]
    indices: torch.Tensor  # int64 [N], dataset indices
    failed: dict[int, str]  # dataset index -> error
    # float32 [N, E]: what attribute heads read beside the features (trainer.multihead.attribute_extra), or None
    extra: torch.Tensor | None = None
    stats: torch.Tensor | None = None  # float32 [N, S], the stage statistics when asked for

    def with_extra(self) -> torch.Tensor:
        """The features with `extra` appended as columns (what trainer.attribute_epochs.FeatureHeads reads)."""
        return self.features if self.extra is None else torch.cat([self.features, self.extra], dim=1)


def extract_features(
    body: nn.Module,
    batches: Iterable[dict[str, Any]],
    prepare: Callable[[torch.Tensor], torch.Tensor],
    stages: tuple[str, ...] = (),
) -> CachedFeatures:
    """Run `body` (eval mode, no grad) once over `batches`; failed samples are left out and reported.
    A body with `attribute_extra` (trainer.multihead) also gives the cache's `extra`; with `stages`
    (trainer.stage_stats.stage_names), each row's stage statistics are kept too."""
    body.eval()
    features, labels, indices, failed, extras, stats = [], [], [], {}, [], []
    taps = StageTaps(stage_root(body), stages).attach() if stages else None
    try:
        _extract(body, batches, prepare, taps, (features, labels, indices, failed, extras, stats))
    finally:
        if taps is not None:
            taps.detach()
    if not features:
        return CachedFeatures(torch.empty(0, 0), torch.empty(0, dtype=torch.long), torch.empty(0), failed)
    return CachedFeatures(
        torch.cat(features),
        torch.cat(labels),
        torch.cat(indices),
        failed,
        extra=torch.cat(extras) if extras else None,
        stats=torch.cat(stats) if stats else None,
    )


def _extract(body: nn.Module, batches: Iterable[dict[str, Any]], prepare: Callable, taps, out: tuple) -> None:
    features, labels, indices, failed, extras, stats = out
    extra_of = getattr(body, "attribute_extra", None)
    with torch.no_grad():
        for batch in batches:
            ok = batch["ok"]
            for index, error in zip(batch["index"][~ok].tolist(), _errors(batch, ~ok), strict=True):
                failed[index] = error
            if not ok.any():
                continue
            x = prepare(batch["image"][ok])
            features.append(body(x).float().cpu())
            extra = None if extra_of is None else extra_of(x)
            if extra is not None:
                extras.append(extra.float().cpu())
            if taps is not None:
                stats.append(taps.statistics().float().cpu())
            labels.append(batch["label"][ok])
            indices.append(batch["index"][ok])


def _errors(batch: dict[str, Any], mask: torch.Tensor) -> list[str]:
    return [e for e, m in zip(batch["error"], mask.tolist(), strict=True) if m]


def cached_batches(
    cache: CachedFeatures, batch_size: int, generator: torch.Generator | None, with_extra: bool = False
) -> Iterable[dict[str, Any]]:
    """Batches shaped like the image loader's (`image` holds features), shuffled when a generator is given;
    `with_extra`: the cache's extra appended to the features (trainer.attribute_epochs.FeatureHeads reads it)."""
    inputs = cache.with_extra() if with_extra else cache.features
    n = len(cache.labels)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        take = order[start : start + batch_size]
        yield {
            "image": inputs[take],
            "label": cache.labels[take],
            "index": cache.indices[take],
            "ok": torch.ones(len(take), dtype=torch.bool),
            "error": [""] * len(take),
        }
