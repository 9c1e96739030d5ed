"""AdaBN: recompute a backbone's BatchNorm statistics on the catalog's own images (`--adapt-bn`).

A frozen backbone normalises with the statistics of the data it was trained on (ImageNet),
or, with `--weights none`, with none at all (mean 0, variance 1): activations then grow
layer after layer and the new head sees badly scaled features, with huge logits whose
softmax saturates. One pass in train mode with a cumulative average (`momentum=None`)
over the training images replaces those statistics; no weight changes, no gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

MAX_IMAGES = 4096  # a cumulative average over this many images is stable; more only costs time


def adapt_batchnorm(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    prepare: Callable[[torch.Tensor], torch.Tensor],
    max_images: int = MAX_IMAGES,
) -> int:
    """Reset and re-estimate every BatchNorm's running mean/var over `batches`; returns images seen."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    saved = [(m.momentum, m.training) for m in norms]
    was_training = model.training
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: every image counts the same
        norm.train()
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                ok = batch["ok"]
                if int(ok.sum()) < 2:  # train-mode BatchNorm needs more than one value per channel
                    continue
                model(prepare(batch["image"][ok]))
                seen += int(ok.sum())
                if seen >= max_images:
                    break
    finally:
        for norm, (momentum, training) in zip(norms, saved, strict=True):
            norm.momentum = momentum
            norm.train(training)
        model.train(was_training)
    return seen
