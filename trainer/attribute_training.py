"""`skutag train --attributes`: the attribute heads (issue 30) in a training run; trainer.train calls these hooks.

`AttributeTraining.create` reads the attribute columns of the manifest, decides each head from
the training photos and encodes the targets and masks of both splits (trainer.attributes), in
split order, so a batch's `index` finds its rows: the dataset itself is unchanged. `wrap` makes
the model an `AttributeModel` (trainer.multihead) whose heads read the pooled features and the
colour statistics of the pixels (trainer.taps), and moves a stage name of the freeze policy
under its `body.`. While fine-tuning (and with `--head-solver adam` outside the cache) `loss`
adds every head's masked, class-balanced loss to the label loss (trainer.head_losses). In the
head phase on cached features `fit_cached` fits each attribute head to its optimum with
full-batch L-BFGS (as trainer.head_fit fits the label head), whichever solver the label head
uses, on standardised inputs with the pooled features weighted `POOLED_WEIGHT` (a stronger
penalty on them than on the colour statistics: measured, benchmarks/RESULTS.md "Attribute
heads"), the standardisation then folded into the head's weights so the model reads raw inputs.
Each validation finishes the card's heads (temperatures, thresholds, review thresholds:
trainer.head_calibration) and their figures (trainer.head_metrics) in trainer.attribute_epochs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from skutag.trainer.attributes import (
    Encoded,
    HeadData,
    decide_heads,
    encode,
    parse_attributes,
    read_attributes,
    with_decided,
)
from skutag.trainer.config import TrainConfig
from skutag.trainer.data import Splits
from skutag.trainer.features import CachedFeatures
from skutag.trainer.head_fit import minimise_l2
from skutag.trainer.head_losses import attribute_loss, balance, head_loss
from skutag.trainer.multihead import PREFIX, AttributeModel
from skutag.trainer.taps import ColourStatistics
from torch import nn

from skutag.card import ModelCard
from skutag.errors import InputError

FIXED_POLICIES = ("backbone", "none")
# Standardised pooled features times this, colour statistics times 1, in a head's L-BFGS fit: with the same
# L2 penalty the 1,280 pooled features would drown the 70 colour statistics (colour accuracy 0.68 -> 0.77
# on catalog-photos at 0.3, pattern unchanged; benchmarks/RESULTS.md, "Attribute heads").
POOLED_WEIGHT = 0.3


@dataclass
class AttributeTraining:
    """The heads of a run and the encoded values of its training and validation photos (split order)."""

    heads: list[HeadData]
    train: dict[str, Encoded]
    val: dict[str, Encoded]
    weights: dict[str, torch.Tensor]
    head_weight: float

    @classmethod
    def create(
        cls, config: TrainConfig, splits: Splits, exclude: str | None = None
    ) -> AttributeTraining | None:
        """None without --attributes; InputError (exit 2) when DATA is not a manifest with the columns.
        `exclude`: the attribute the label head learns (a manifest without `label`); None when it was the only one."""
        if config.attributes is None:
            return None
        specs = [spec for spec in parse_attributes(config.attributes) if spec.name != exclude]
        if not specs:
            return None
        if not Path(config.data).is_file():
            raise InputError(
                f"--attributes needs DATA to be a CSV/Parquet manifest with the attribute columns, not {config.data}"
            )
        table = read_attributes(config.data, specs)
        if config.decisions:  # people's attribute values from `skutag review` (trainer.attributes)
            table = with_decided(table, config.decisions, specs)
        heads = decide_heads(specs, [s.path for s in splits.train], table)
        train = {h.name: encode(h, [s.path for s in splits.train], table) for h in heads}
        val = {h.name: encode(h, [s.path for s in splits.val], table) for h in heads}
        weights = {h.name: balance(h, train[h.name]) for h in heads}
        return cls(heads, train, val, weights, config.attribute_weight)

    def describe(self) -> str:
        parts = [
            f"{h.name} ({h.kind}, {len(h.values)} values, {int(self.train[h.name].mask.sum())} train photos with one)"
            for h in self.heads
        ]
        return "attribute heads: " + "; ".join(parts)

    def wrap(self, model: nn.Module, policy: str, card: ModelCard) -> tuple[AttributeModel, str]:
        """The model with a head per attribute (reading the colour statistics of `card`'s normalised pixels
        too), and the freeze policy in the wrapped model's names."""
        colour = ColourStatistics.for_card(card.mean, card.std)
        wrapped = AttributeModel.wrap(model, {h.name: len(h.values) for h in self.heads}, colour)
        return wrapped, policy if policy in FIXED_POLICIES else f"body.{policy}"

    def loss(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> torch.Tensor:
        """The attribute heads' loss of a training batch (files that failed to load are masked out)."""
        index = batch["index"].cpu().numpy()
        ok = batch["ok"].cpu().numpy()
        device = outputs["label"].device
        targets = {
            name: (
                torch.from_numpy(encoded.targets[index]).to(device),
                torch.from_numpy(encoded.mask[index] & ok).to(device),
            )
            for name, encoded in self.train.items()
        }
        heads = {h.name: h for h in self.heads}
        return attribute_loss(outputs, targets, heads, self.weights, self.head_weight)[0]

    def fit_cached(self, model: nn.Module, cache: CachedFeatures) -> None:
        """Fit every attribute head to the cached features with full-batch L-BFGS (L2 as in trainer.head_fit)."""
        model = _plain(model)
        index = cache.indices.numpy()
        device = model.label_head.weight.device
        x = model.attribute_input(cache.features, cache.extra).to(device, torch.float32)
        scale = _group_weights(cache.features.shape[1], x.shape[1], device)
        for head in self.heads:
            layer = model.heads[head.name]
            encoded = self.train[head.name]
            _fit_head(
                layer, head.kind, x, scale,
                torch.from_numpy(encoded.targets[index]).to(device), torch.from_numpy(encoded.mask[index]).to(device),
                self.weights[head.name].to(device),
            )  # fmt: skip


def _group_weights(pooled: int, width: int, device: torch.device) -> torch.Tensor:
    """Per input column: `POOLED_WEIGHT` for the pooled features, 1 for what follows them (the colour statistics)."""
    scale = torch.ones(width, device=device)
    if width > pooled:
        scale[:pooled] = POOLED_WEIGHT
    return scale


def _fit_head(
    layer: nn.Linear,
    kind: str,
    x: torch.Tensor,
    scale: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
) -> None:
    """One head fitted in place: its masked, balanced loss + ||W||^2 / (2 N) (C = 1), N the photos with a value,
    on the inputs standardised over those photos and times `scale`; then folded back so `layer` reads raw x.
    (Without colour statistics, `scale` is 1: the pooled features are standardised alone.)"""
    if not bool(mask.any()):
        return
    rows = x[mask]
    mean = rows.mean(0)
    factor = scale / torch.sqrt(rows.var(0, unbiased=False) + 1e-4)  # z = (x - mean) * factor
    z = (x - mean) * factor
    fitted = nn.Linear(x.shape[1], layer.out_features).to(x.device)
    with torch.no_grad():
        fitted.weight.zero_()
        fitted.bias.zero_()
    minimise_l2(fitted, lambda: head_loss(kind, fitted(z), targets, mask, weight), int(mask.sum()))
    with torch.no_grad():
        w = fitted.weight * factor
        layer.weight.copy_(w.to(layer.weight.dtype))
        layer.bias.copy_((fitted.bias - w @ mean).to(layer.bias.dtype))


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load `best.safetensors`' state into the training model: as is, or an AttributeModel's from its plain
    keys (trainer.multihead.plain_state: the classifier's keys, `attributes.<name>.*` for the heads)."""
    plain = _plain(model)
    if not isinstance(plain, AttributeModel):
        model.load_state_dict(state)
        return
    label = plain.head_name + "."
    mapped = {}
    for key, value in state.items():
        if key.startswith(PREFIX):
            mapped["heads." + key[len(PREFIX) :]] = value
        elif key.startswith(label):
            mapped["label_head." + key[len(label) :]] = value
        else:
            mapped["body." + key] = value
    plain.load_state_dict(mapped)


def _plain(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
