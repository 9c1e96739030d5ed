"""The two Ray Data stages of `--engine ray` and the columns that travel between them.

`decode_block` (CPU tasks) reads and decodes a block of decode tasks through
`batchrun.decode.loader.decode_one`, the local engine's one decode path, in a child process
with a time limit (`batchrun.decode.contained.ContainedDecoder`). `Predictor` (actors) holds
one ONNX Runtime session, opened from the model's bytes (shipped through the object store, so
worker nodes need no copy of the file), and predicts through the local engine's predictor
(`batchrun.predict.predictor.assemble_predictor`). A decode failure never escapes (Ray Data fails the whole job
on a UDF exception, and its `max_errored_blocks` would drop a block's good rows with it): an
input that cannot be processed becomes an error row (`crashed` or `timeout`, which
`--retry-errors` retries). A model that raises is not an input's fault: the actor raises
`engines.base.inference_failed` (a SystemicFault), which fails the job and stops the run with
exit 4, as on the local engine.

Columns carry no nulls (Ray Data infers each block's schema): "" and -1 stand for "none"
(`loader.columns_of`, the local engine's Collate too) and `loader.batch_of` turns them back into
`loader.Batch`, which the writer takes.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
import warnings
from typing import Any

import numpy as np

from skutag.heads import OUTPUT_PREFIX

from ..commit.writer import empty_predictions
from ..decode.contained import ContainedDecoder
from ..decode.loader import FACTS, Preprocess, ReadOptions, batch_of, columns_of, error_sample
from ..predict import review
from ..predict.infer import Predictions, open_session
from ..predict.model import ModelContract
from ..predict.predictor import assemble_predictor
from .base import inference_failed

_DECODERS: dict[tuple, ContainedDecoder] = {}  # per Ray worker process: one contained decoder child


def decode_block(
    block: dict[str, np.ndarray], preprocess: Preprocess, read: ReadOptions, timeout_s: float, nice: int = 0
) -> dict[str, Any]:
    """Decode tasks -> pixels (zeros for error rows) and the facts of every row.

    Each input is read and decoded in a child process of this Ray worker with a time limit,
    as the local engine's supervised workers do: a decoder that hangs or kills its process
    costs that input a `timeout` or `crashed` row, and a fresh child takes the next input.
    """
    key = (preprocess, timeout_s, nice)
    decoder = _DECODERS.get(key) or _DECODERS.setdefault(
        key, ContainedDecoder(preprocess, timeout_s, nice=nice)
    )
    jobs = [
        (int(t), str(u), int(s)) for t, u, s in zip(block["task"], block["uri"], block["size"], strict=True)
    ]
    try:
        samples = decoder.decode_inputs(jobs, read)  # one round trip to the child for the block
    except Exception as exc:  # decode_one contains decoder errors; this is anything else
        message = f"decode task failed: {type(exc).__name__}: {exc}"
        samples = [error_sample(task, "crashed", message) for task, _uri, _size in jobs]
    size = preprocess.image_size
    pixels = np.zeros((len(samples), size, size, 3), np.uint8)
    for row, sample in enumerate(samples):
        if sample.pixels is not None:
            pixels[row] = sample.pixels
    return {"pixels": pixels, **columns_of(samples)}


@dataclasses.dataclass(frozen=True)
class PredictorConfig:
    device: str
    batch_size: int
    threads: int
    topk: int
    embeddings: bool
    trt_cache: str | None
    share_cores: bool  # decode tasks run on the same cores: ORT threads must not spin


class Predictor:
    """A Ray Data actor: one ORT session, uint8 batches in, top-k (and embeddings) out."""

    def __init__(self, contract: ModelContract, model: list[Any], config: PredictorConfig):
        import ray

        data = ray.get(model[0])
        fd, path = tempfile.mkstemp(prefix="skutag-model-", suffix=".onnx")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            self.contract = dataclasses.replace(contract, path=path)
            session, info = open_session(
                self.contract, config.device, batch_size=config.batch_size, threads=config.threads,
                trt_cache=config.trt_cache, share_cores=config.share_cores,
            )  # fmt: skip
        finally:
            os.unlink(path)  # the session holds the model; the file is not needed again
        self.info = info
        self.config = config
        self.dim = contract.embedding_dim if config.embeddings else None
        self.pad = config.batch_size if info.device in ("cuda", "tensorrt") else 0
        self.review = review.wanted(contract)
        self.predict = assemble_predictor(
            session, info, self.contract, topk=config.topk, embeddings=config.embeddings,
            batch_size=config.batch_size,
        )  # fmt: skip

    def __call__(self, block: dict[str, np.ndarray]) -> dict[str, Any]:
        started = time.perf_counter()
        rows = len(block["task"])
        facts = {name: block[name] for name in FACTS}
        try:
            predictions = self._predict(block)
        except Exception as exc:  # not an input's fault: the job stops (exit 4), as on the local engine
            raise inference_failed(exc) from exc
        out = {
            **facts,
            "topk_indices": predictions.topk_indices[:rows],
            "topk_scores": predictions.topk_scores[:rows],
            "infer_s": np.full(rows, (time.perf_counter() - started) / max(rows, 1)),
            "device": np.array([self.info.device] * rows, dtype=object),
            "providers": np.array([",".join(self.info.providers)] * rows, dtype=object),
            "fallback": np.array([self.info.fallback_reason or ""] * rows, dtype=object),
        }
        if self.dim is not None:
            out["embedding"] = np.ascontiguousarray(predictions.embedding[:rows], np.float32)
        for head in (
            self.contract.card.attributes or ()
        ):  # the writer's attribute columns (predict.attributes)
            if predictions.attributes is not None:
                out[head.output] = np.ascontiguousarray(predictions.attributes[head.name][:rows], np.float32)
            else:  # no good row in the block: every attribute column is null
                out[head.output] = np.zeros((rows, len(head.values)), np.float32)
        if self.review:  # the writer turns it into the review columns (batchrun.predict.review)
            ood = predictions.ood_score
            out["ood_score"] = ood[:rows] if ood is not None else np.full(rows, np.nan, np.float32)
        return out

    def _predict(self, block: dict[str, np.ndarray]) -> Predictions:
        rows = len(block["task"])
        if not block["ok"].any():
            return empty_predictions(rows, self.config.topk, self.dim)
        pixels = np.ascontiguousarray(block["pixels"], np.uint8)
        batch = batch_of(block)
        if self.pad:  # CUDA / TensorRT: one batch shape, copied from a torch tensor (IO binding)
            import torch

            if self.pad > rows:
                pixels = np.concatenate([pixels, np.zeros((self.pad - rows, *pixels.shape[1:]), np.uint8)])
            with warnings.catch_warnings():  # Ray's zero-copy blocks are read-only; ORT only reads them
                warnings.simplefilter("ignore", UserWarning)
                batch.pixels = torch.from_numpy(pixels)
        else:  # the CPU provider reads the numpy block as it is: no torch in a CPU actor
            batch.pixels = pixels
        return self.predict(batch)


def to_predictions(block: dict[str, np.ndarray], embeddings: bool) -> Predictions:
    embedding = np.asarray(block["embedding"], np.float32) if embeddings else None
    ood = np.asarray(block["ood_score"], np.float32) if "ood_score" in block else None
    prefix = OUTPUT_PREFIX
    heads = {k[len(prefix) :]: np.asarray(v, np.float32) for k, v in block.items() if k.startswith(prefix)}
    return Predictions(
        np.asarray(block["topk_indices"], np.int32),
        np.asarray(block["topk_scores"], np.float32),
        embedding,
        ood,
        attributes=heads or None,
    )
