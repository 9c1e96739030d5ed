"""The predictor both engines run: an open session -> a callable Batch -> Predictions, assembled once.

`make_predictor` (or `DevicePredictor`, for pixels the GPU decoded and a session on the GPU)
does top-k and, when the run writes embeddings or the card has a `review` section, the
`embedding` output; `review.with_review` adds the OOD score and drops the embedding unless
the run keeps it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from . import review
from .infer import DevicePredictor, Predictions, SessionInfo, make_predictor
from .model import ModelContract

log = logging.getLogger(__name__)


def assemble_predictor(
    session,
    info: SessionInfo,
    contract: ModelContract,
    *,
    topk: int,
    embeddings: bool,
    batch_size: int,
    device_pixels: bool = False,
) -> Callable[..., Predictions]:
    """The run's predictor. `embeddings`: the run writes them; `device_pixels`: batches arrive with
    pixels already on the session's GPU (the local engine's `--decode gpu` on a GPU session)."""
    wanted = embeddings or review.needs_embedding(contract)
    if device_pixels:
        predict = DevicePredictor(session, contract, topk=topk, embeddings=wanted, batch_size=batch_size)
    else:
        predict = make_predictor(session, info, contract, topk=topk, embeddings=wanted, batch_size=batch_size)
    if not contract.has_card and not contract.apply_softmax:
        predict = warn_if_logits(predict, contract)
    return review.with_review(predict, contract, keep_embedding=embeddings)


def warn_if_logits(
    predict: Callable[..., Predictions], contract: ModelContract
) -> Callable[..., Predictions]:
    """A model without a card writes its scores as they come out: warn once (a warning, not a refusal:
    some models output scores that are not probabilities on purpose) as soon as a batch's top
    scores are outside [0, 1], which probabilities never are."""
    warned = False

    def checked(batch) -> Predictions:
        nonlocal warned
        predictions = predict(batch)
        top = predictions.topk_scores[: len(batch)][np.asarray(batch.ok, bool)]
        if not warned and top.size and (top.max() > 1.0 or top.min() < 0.0):
            warned = True
            log.warning(
                "%s: scores outside [0, 1] (e.g. %.2f): they look like logits and are written as they are "
                "into `score`; pass --softmax for probabilities",
                contract.path.name,
                float(top.flat[np.abs(top).argmax()]),
            )
        return predictions

    return checked
