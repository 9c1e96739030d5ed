"""The attribute heads epoch by epoch (issue 30): what `skutag train --attributes` records, and selects the best
epoch by, after every epoch.

After each epoch's validation the heads are finished on that epoch's validation logits as the run's end finishes
them (trainer.head_calibration: temperature, thresholds, review threshold), so `best.safetensors`, written mid-run,
carries a card with its heads and exports. history.csv gains per head `attributes.<name>.accuracy`,
`.macro_f1` and `.map` (the figures of metrics.json's `attributes.<name>`, trainer.head_metrics) and
`best_score`, the figure the best epoch is picked by: the mean of the label head's `--best-metric` and each
head's validation `map` (threshold- and temperature-free; a head without validation values is left out).
`train_loss` includes the attribute heads' loss in every phase: the minibatch loss adds it per batch
(trainer.loop's `extra_loss`); a head epoch on cached features adds the heads' loss on those features after
their fit (`cached_loss`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from skutag.trainer.attribute_training import AttributeTraining
from skutag.trainer.attributes import Encoded
from skutag.trainer.features import CachedFeatures
from skutag.trainer.head_calibration import finish_heads, probabilities
from skutag.trainer.head_metrics import attribute_metrics
from torch import nn

from skutag.heads import AttributeHead

SELECTION_FIGURE = "map"  # each head's share of best_score
HISTORY_FIGURES = ("accuracy", "macro_f1", "map")
SCORE = "best_score"


class FeatureHeads(nn.Module):
    """Every head of an AttributeModel over pooled features: the network a head epoch validates on the cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = _plain(model)

    def forward(self, features: torch.Tensor, all_heads: bool = False) -> Any:
        out = self.model.logits(features)
        return out if all_heads else out["label"]


def epoch_heads(
    attrs: AttributeTraining, logits: dict[str, np.ndarray], indices: np.ndarray
) -> tuple[tuple[AttributeHead, ...], dict[str, dict[str, Any]]]:
    """The heads finished on one epoch's validation logits (rows: validation `indices`) and their figures."""
    index = np.asarray(indices, np.int64)
    encoded = {name: Encoded(e.targets[index], e.mask[index]) for name, e in attrs.val.items()}
    heads = finish_heads(attrs.heads, logits, encoded)
    probs = {h.name: probabilities(h.kind, logits[h.name], h.temperature) for h in heads}
    return heads, attribute_metrics(heads, probs, encoded)


def selection_score(label_value: float, figures: dict[str, dict[str, Any]]) -> float:
    """The mean of the label head's figure and each head's `map` (nan figures are left out)."""
    values = [label_value] + [float(f[SELECTION_FIGURE]) for f in figures.values()]
    kept = [v for v in values if np.isfinite(v)]
    return float(np.mean(kept)) if kept else float("nan")


def history_columns(attrs: AttributeTraining | None) -> list[str]:
    """The columns history.csv adds for the heads (none without attributes)."""
    if attrs is None:
        return []
    return [f"attributes.{h.name}.{k}" for h in attrs.heads for k in HISTORY_FIGURES] + [SCORE]


def history_fields(figures: dict[str, dict[str, Any]], score: float) -> dict[str, float]:
    row = {f"attributes.{name}.{k}": float(f[k]) for name, f in figures.items() for k in HISTORY_FIGURES}
    return row | {SCORE: score}


def cached_loss(attrs: AttributeTraining, model: nn.Module, cache: CachedFeatures) -> float:
    """The attribute heads' training loss (times --attribute-weight) on the cached training features."""
    plain = _plain(model)
    device = plain.label_head.weight.device
    with torch.no_grad():
        logits = plain.logits(cache.features.to(device, torch.float32))
        batch = {"index": cache.indices, "ok": torch.ones(len(cache.indices), dtype=torch.bool)}
        return float(attrs.loss(logits, batch))


def _plain(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
