"""What a run learns about its attribute heads on validation, after training: the card's heads.

Per head, on the validation photos that have a value (missing ones are masked out):
the temperature (one number that minimises the validation negative log-likelihood of
softmax(logits / T) or sigmoid(logits / T): a grid over T in [0.05, 20]); for a multi-valued
head, each value's threshold with the best F1 on the calibrated probabilities (a value no
validation photo has keeps 0.5); and the review threshold, the 5% quantile of the head's
confidence (`AttributeHead.confidence`) over the photos the head gets right, as the label
head's `confidence_threshold` is chosen. `finish_heads` returns the `AttributeHead`s the card
lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
from skutag.trainer.attributes import Encoded, HeadData

from skutag.heads import POOLED, SINGLE, AttributeHead

TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 241))
REVIEW_QUANTILE = 0.05
EDGE = 1e-3  # thresholds stay inside (0, 1)


def probabilities(kind: str, logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax (single) or sigmoid (multi) of logits / temperature, float64 [N, V]."""
    scaled = np.asarray(logits, np.float64) / temperature
    if kind == SINGLE:
        shifted = np.exp(scaled - scaled.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-scaled))


def _nll(kind: str, logits: np.ndarray, encoded: Encoded, temperature: float) -> float:
    probs = np.clip(probabilities(kind, logits, temperature), 1e-12, 1 - 1e-12)
    if kind == SINGLE:
        return float(-np.log(probs[np.arange(len(probs)), encoded.targets[encoded.mask]]).mean())
    y = encoded.targets[encoded.mask]
    return float(-(y * np.log(probs) + (1 - y) * np.log(1 - probs)).mean())


def fit_temperature(kind: str, logits: np.ndarray, encoded: Encoded) -> float:
    """The grid temperature with the lowest validation NLL (1.0 when no photo has a value)."""
    logits = np.asarray(logits)[encoded.mask]
    if not len(logits):
        return 1.0
    losses = [_nll(kind, logits, encoded, t) for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(losses))])


def best_f1_thresholds(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per value, the threshold with the best F1 (midway between two scores; ties: the higher one)."""
    probs, targets = np.asarray(probs, np.float64), np.asarray(targets) > 0.5
    chosen = np.full(probs.shape[1], 0.5)
    for v in range(probs.shape[1]):
        positives = int(targets[:, v].sum())
        if positives == 0:
            continue
        scores = np.unique(probs[:, v])[::-1]  # descending
        candidates = np.concatenate([(scores[:-1] + scores[1:]) / 2, [scores[-1] / 2]])
        best, best_f1 = 0.5, -1.0
        for t in candidates:
            given = probs[:, v] >= t
            tp = int((given & targets[:, v]).sum())
            f1 = 2 * tp / (int(given.sum()) + positives)
            if f1 > best_f1 + 1e-12:
                best, best_f1 = float(t), f1
        chosen[v] = best
    return np.clip(chosen, EDGE, 1 - EDGE)


def review_threshold(head: AttributeHead, probs: np.ndarray, encoded: Encoded) -> float | None:
    """The 5% quantile of `head.confidence` over validation photos it gets right (None: none right)."""
    probs = np.asarray(probs)[encoded.mask]
    targets = encoded.targets[encoded.mask]
    given = head.given(probs)
    if head.kind == SINGLE:
        right = given.argmax(axis=1) == targets
    else:
        right = (given == (targets > 0.5)).all(axis=1)
    if not right.any():
        return None
    return float(np.quantile(head.confidence(probs[right]), REVIEW_QUANTILE))


def finish_heads(
    heads: Sequence[HeadData],
    val_logits: Mapping[str, np.ndarray],
    val: Mapping[str, Encoded],
    reads: tuple[str, ...] = (POOLED,),
) -> tuple[AttributeHead, ...]:
    """The card's heads: temperature, thresholds (multi) and review threshold from validation; `reads`:
    what the model's attribute heads read (trainer.multihead.AttributeModel.reads)."""
    finished = []
    for data in heads:
        logits, encoded = np.asarray(val_logits[data.name]), val[data.name]
        temperature = fit_temperature(data.kind, logits, encoded)
        probs = probabilities(data.kind, logits, temperature)
        thresholds = None
        if data.kind != SINGLE:
            thresholds = tuple(
                best_f1_thresholds(probs[encoded.mask], encoded.targets[encoded.mask]).tolist()
            )
        head = AttributeHead(data.name, data.kind, data.values, thresholds, temperature, reads=reads)
        finished.append(replace(head, review_threshold=review_threshold(head, probs, encoded)))
    return tuple(finished)
