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
MISTAKE_COLUMNS = ("path", "true_label", "predicted_label", "target", "score")


class FeatureHeads(nn.Module):
    """Every head of an AttributeModel over cached inputs: the network a head epoch validates on the cache.

    Its input is the pooled features with the cache's `extra` (what the attribute heads read beside them,
    trainer.multihead.attribute_extra) appended as columns; it splits them again at the
    label head's width (CachedFeatures.with_extra)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = _plain(model)

    def forward(self, inputs: torch.Tensor, all_heads: bool = False) -> Any:
        width = self.model.label_head.in_features
        extra = inputs[:, width:] if inputs.shape[1] > width else None
        out = self.model.logits(inputs[:, :width], extra)
        return out if all_heads else out["label"]


def epoch_heads(
    attrs: AttributeTraining, model: nn.Module, logits: dict[str, np.ndarray], indices: np.ndarray
) -> tuple[tuple[AttributeHead, ...], dict[str, dict[str, Any]]]:
    """The heads of `model` finished on one epoch's validation logits (rows: validation `indices`) and
    their figures; the card's heads say what the model's heads read."""
    index = np.asarray(indices, np.int64)
    encoded = {name: Encoded(e.targets[index], e.mask[index]) for name, e in attrs.val.items()}
    heads = finish_heads(attrs.heads, logits, encoded, _plain(model).reads)
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
        extra = None if cache.extra is None else cache.extra.to(device, torch.float32)
        logits = plain.logits(cache.features.to(device, torch.float32), extra)
        batch = {"index": cache.indices, "ok": torch.ones(len(cache.indices), dtype=torch.bool)}
        return float(attrs.loss(logits, batch))


def head_mistakes(
    head: AttributeHead, model: nn.Module, val: CachedFeatures, encoded: Encoded, paths: list[str]
) -> list[dict[str, Any]]:
    """The validation photos head `head` (as the card has it) gets wrong, most confident first: the rows of
    REPORT/<name>-misclassified.csv that `--gradcam-head` explains (trainer.explain). `target` is the value the
    heatmap is of: the predicted one; multi: the most probable value given wrongly, else the most probable missed."""
    index = val.indices.numpy().astype(np.int64)
    with torch.no_grad():
        logits = FeatureHeads(model)(val.with_extra().to(_device(model)), all_heads=True)[head.name]
    probs = probabilities(head.kind, logits.float().cpu().double().numpy(), head.temperature)
    targets, mask = encoded.targets[index], encoded.mask[index]
    values, rows = head.values, []
    given = head.given(probs)
    for row, p in enumerate(probs):
        if not mask[row]:
            continue
        if head.kind == "single":
            predicted, truth = int(p.argmax()), int(targets[row])
            if predicted != truth:
                rows.append(
                    _mistake(
                        paths[index[row]], values[truth], values[predicted], values[predicted], p[predicted]
                    )
                )
            continue
        truth = targets[row] > 0.5
        wrong, missed = given[row] & ~truth, truth & ~given[row]
        if not (wrong.any() or missed.any()):
            continue
        pick = np.where(wrong, p, -1.0).argmax() if wrong.any() else np.where(missed, p, -1.0).argmax()
        rows.append(
            _mistake(
                paths[index[row]], _joined(values, truth), _joined(values, given[row]), values[pick], p[pick]
            )
        )
    return sorted(rows, key=lambda r: -r["score"])


def _mistake(path: str, true: str, predicted: str, target: str, score: float) -> dict[str, Any]:
    return {
        "path": path,
        "true_label": true,
        "predicted_label": predicted,
        "target": target,
        "score": float(score),
    }


def _joined(values: tuple[str, ...], chosen: np.ndarray) -> str:
    return "|".join(v for v, c in zip(values, chosen, strict=True) if c) or "(none)"


def _device(model: nn.Module) -> torch.device:
    return next(_plain(model).parameters()).device


def _plain(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
