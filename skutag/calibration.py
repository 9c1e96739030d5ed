"""Confidence that means what it says: temperature scaling and the expected calibration error.

`fit_temperature` finds the one temperature T that minimises the negative log-likelihood of
softmax(logits / T) on held-out (validation) logits (Guo et al. 2017). The NLL is convex in
1/T, so a bracketing search on its derivative finds the optimum exactly; T > 1 softens an
overconfident model. The trainer stores T in the card (`temperature`) and the exported graph
divides its logits by it before the softmax, so every format gives the calibrated probabilities.
`retemper(probs, factor)` = softmax(log(probs) * factor) moves between the two without logits
(factor 1/T calibrates raw probabilities, T undoes it). `ece` is the expected calibration error
over 15 equal-width confidence bins; `reliability` gives the bins themselves, for the report.
One function per job and numpy only, so one temperature per head works the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BINS = 15
T_MIN, T_MAX = 0.05, 20.0  # the search bracket; a fitted T outside it is clipped to it


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll_slope(logits: np.ndarray, labels: np.ndarray, beta: float) -> float:
    """d NLL / d beta of softmax(beta * logits): E_p[z] - z_true, averaged (increasing in beta)."""
    p = softmax(logits * beta)
    return float(((p * logits).sum(axis=1) - logits[np.arange(len(labels)), labels]).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the NLL of softmax(logits / T) on (`logits` [N, K], `labels` [N]).

    1.0 when there is nothing to fit (no rows); clipped to [T_MIN, T_MAX] (a model that is right on
    every row would otherwise want T -> 0)."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    if len(y) == 0:
        return 1.0
    low, high = 1.0 / T_MAX, 1.0 / T_MIN  # beta = 1 / T
    if _nll_slope(z, y, high) <= 0:
        return T_MIN
    if _nll_slope(z, y, low) >= 0:
        return T_MAX
    for _ in range(60):  # bisection on the monotone slope; 60 halvings are far below float noise
        mid = 0.5 * (low + high)
        if _nll_slope(z, y, mid) > 0:
            high = mid
        else:
            low = mid
    return float(1.0 / (0.5 * (low + high)))


def retemper(probs: np.ndarray, factor: float) -> np.ndarray:
    """softmax(log(probs) * factor): probabilities as if the logits had been multiplied by `factor`."""
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-300, None))
    return softmax(logp * factor)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> list[dict[str, Any]]:
    """Per confidence bin (equal width over (0, 1]): rows, mean confidence, accuracy (None when empty)."""
    probs = np.asarray(probs, np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    table = []
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        table.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "rows": n,
                "confidence": float(confidence[inside].mean()) if n else None,
                "accuracy": float(correct[inside].mean()) if n else None,
            }
        )
    return table


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: sum over bins of (rows / N) * |accuracy - confidence|."""
    total = len(labels)
    if total == 0:
        return float("nan")
    return float(
        sum(
            r["rows"] / total * abs(r["accuracy"] - r["confidence"])
            for r in reliability(probs, labels, bins)
            if r["rows"]
        )
    )
