"""The predictor both engines run: an open session -> a callable Batch -> Predictions, assembled once.

`make_predictor` (or `DevicePredictor`, for pixels the GPU decoded and a session on the GPU)
does top-k and, when the run writes embeddings or the card has a `review` section, the
`embedding` output; `review.with_review` adds the OOD score and drops the embedding unless
the run keeps it.
"""

from __future__ import annotations

from collections.abc import Callable

from . import review
from .infer import DevicePredictor, Predictions, SessionInfo, make_predictor
from .model import ModelContract


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
    wanted = embeddings or review.wanted(contract)
    if device_pixels:
        predict = DevicePredictor(session, contract, topk=topk, embeddings=wanted, batch_size=batch_size)
    else:
        predict = make_predictor(session, info, contract, topk=topk, embeddings=wanted, batch_size=batch_size)
    return review.with_review(predict, contract, keep_embedding=embeddings)
