"""The head phase's default solver: the classifier fitted as an L2-regularised logistic regression.

On cached features the head is a convex problem: `fit_logistic` solves it to its optimum with
full-batch L-BFGS (the objective of scikit-learn's LogisticRegression: mean cross-entropy +
||W||^2 / (2 C N), the bias unpenalised), on the model's own Linear head, so the saved model is
the fit. No learning rate, no epochs to pick on a small validation split, seconds on a CPU;
measured against the minibatch Adam head in benchmarks/RESULTS.md (model_table, 0.4).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from skutag.trainer.features import CachedFeatures
from skutag.trainer.loop import EpochResult
from torch import nn

MAX_ITER = 300  # L-BFGS iterations per head epoch (a fit converges in far fewer on 1,000-wide features)


def fit_logistic(
    head: nn.Linear,
    cache: CachedFeatures,
    *,
    c: float = 1.0,
    class_weights: torch.Tensor | None = None,
    max_iter: int = MAX_ITER,
) -> EpochResult:
    """Fit `head` (in place) to the cached features; returns the epoch's figures (the final loss)."""
    if not isinstance(head, nn.Linear):
        raise TypeError(f"the L-BFGS head needs a Linear classifier, not {type(head).__name__}")
    start = time.perf_counter()
    device = head.weight.device
    x = cache.features.to(device, torch.float32)
    y = cache.labels.to(device)
    weights = None if class_weights is None else class_weights.to(device)
    head.train()
    minimise_l2(
        head, lambda: nn.functional.cross_entropy(head(x), y, weight=weights), len(y) * c, max_iter=max_iter
    )
    with torch.no_grad():
        loss = float(nn.functional.cross_entropy(head(x), y, weight=weights))
    return EpochResult(loss, len(y), time.perf_counter() - start)


def minimise_l2(
    layer: nn.Linear, data_loss: Callable[[], torch.Tensor], n: float, *, max_iter: int = MAX_ITER
) -> None:
    """Minimise `data_loss() + ||W||^2 / (2 n)` over `layer`'s parameters in place (full-batch L-BFGS; the bias
    unpenalised): scikit-learn's objective with n = C x the number of rows. The one solver of every head fit."""
    penalty = 1.0 / (2.0 * n)
    optimizer = torch.optim.LBFGS(
        list(layer.parameters()), lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-6, tolerance_change=1e-9,
    )  # fmt: skip

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = data_loss() + penalty * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
