"""The loss of a model with attribute heads: one term per head, missing values masked out.

Single-valued heads: softmax cross-entropy over the rows that have a value, each value
weighted by its inverse frequency in training (scikit-learn's "balanced": n / (k * count)).
Multi-valued heads: binary cross-entropy per value over the rows that have any value, each
value's positives weighted by negatives / positives (`pos_weight`, capped). A row whose
value is missing adds nothing to that head's loss; a batch where no row has a value adds a
zero that still touches the head's logits, so DDP sees every parameter used.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from skutag.trainer.attributes import Encoded, HeadData

from skutag.heads import SINGLE

MAX_POS_WEIGHT = 50.0


def balance(head: HeadData, train: Encoded) -> torch.Tensor:
    """The head's weights from its training targets: class weights (single) or pos_weight (multi)."""
    rows = train.mask.sum()
    k = len(head.values)
    if head.kind == SINGLE:
        counts = np.bincount(train.targets[train.mask], minlength=k).astype(np.float64)
        weights = np.where(counts > 0, rows / (k * np.maximum(counts, 1)), 0.0)
        return torch.tensor(weights, dtype=torch.float32)
    positives = train.targets[train.mask].sum(axis=0).astype(np.float64)
    negatives = rows - positives
    weights = np.clip(negatives / np.maximum(positives, 1.0), 1.0 / MAX_POS_WEIGHT, MAX_POS_WEIGHT)
    return torch.tensor(weights, dtype=torch.float32)


def head_loss(
    kind: str, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None
) -> torch.Tensor:
    """One head's mean loss over the rows of `mask` (targets: int64 [N] single, float [N, V] multi)."""
    if not bool(mask.any()):
        return logits.sum() * 0.0
    logits = logits[mask].float()
    if kind == SINGLE:
        return F.cross_entropy(logits, targets[mask], weight=weight)
    return F.binary_cross_entropy_with_logits(logits, targets[mask].float(), pos_weight=weight)


def attribute_loss(
    logits: Mapping[str, torch.Tensor],
    targets: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    heads: Mapping[str, HeadData],
    weights: Mapping[str, torch.Tensor | None],
    head_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of the attribute heads' losses (each times `head_weight`) and each head's value for the log.
    `targets[name]` is (targets, mask) of the batch; the label head's loss stays the trainer's own."""
    total = None
    parts = {}
    for name, head in heads.items():
        value, mask = targets[name]
        weight = weights.get(name)
        loss = head_loss(
            head.kind, logits[name], value, mask, None if weight is None else weight.to(value.device)
        )
        parts[name] = float(loss.detach())
        total = loss * head_weight if total is None else total + loss * head_weight
    assert total is not None, "attribute_loss needs at least one head"
    return total, parts
