"""One ONNX Runtime session, fed uint8 batches, returning top-k (and embeddings) per row.

CPU: `session.run` on the batch as a numpy view of the DataLoader's tensor (no copy for
uint8 models), top-k on the host with `np.argpartition`.
CUDA / TensorRT: IO binding to device buffers of one fixed batch shape (the loader pads
the last batch, so cuDNN and TensorRT never see a new shape); pixels arrive in pinned
memory and are copied on torch's stream, which is synchronised before ORT runs (IO binding
does not synchronise with torch); the scores stay on the device, where `torch.topk` picks
the top k, so only k values per row come back to the host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from skutag.normalize import normalize, normalize_nhwc_uint8, pixel_scale
from skutag.runtime import SessionInfo, create_session

from .model import DOMAIN, EMBEDDING, ModelContract

if TYPE_CHECKING:  # the loader's import (Pillow, pyarrow, storage) is no part of opening a session
    from ..decode.loader import Batch

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


@dataclass
class Predictions:
    topk_indices: np.ndarray  # int32 [rows, k], best first
    topk_scores: np.ndarray  # float32 [rows, k]
    embedding: np.ndarray | None  # float32 [rows, D]
    ood_score: np.ndarray | None = (
        None  # float32 [rows], batchrun.predict.review (models whose card has `review`)
    )
    attributes: dict[str, np.ndarray] | None = None  # head name -> float32 [rows, values] (attribute heads)


def open_session(
    contract: ModelContract,
    device: str,
    *,
    batch_size: int,
    threads: int | None = None,
    trt_cache: str | os.PathLike | None = None,
    share_cores: bool = False,
) -> tuple[Any, SessionInfo]:
    """The run's one session (main process, after the DataLoader workers exist).

    Provider options come from the card's row of the export-target table
    (`skutag.runtime.provider_chain`): TensorRT precision flags, one profile of exactly
    `batch_size` (the loader pads the last batch), caches under `trt_cache`. A model whose
    target cannot run on `device` (an int8 CPU model on TensorRT) is refused before any
    provider is created.
    `share_cores`: decode workers run on the same CPU cores, so ORT's threads must not spin
    while they wait (spinning takes the cycles the decoder needs; batches are large enough
    that waking a thread costs nothing measurable).
    """
    return create_session(
        contract.path,
        device,
        card=contract.card,
        input_name=contract.input_name,
        batch_size=batch_size,
        trt_cache_dir=Path(trt_cache) if trt_cache else None,
        threads=threads,
        session_config={"session.intra_op.allow_spinning": "0"} if share_cores else None,
    )


def make_predictor(
    session, info: SessionInfo, contract: ModelContract, *, topk: int, embeddings: bool, batch_size: int
):
    """A callable Batch -> Predictions for the provider the session really runs on."""
    if info.device in ("cuda", "tensorrt"):
        return BoundPredictor(session, contract, topk=topk, embeddings=embeddings, batch_size=batch_size)
    return HostPredictor(session, contract, topk=topk, embeddings=embeddings)


def topk_host(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row, best first, ties broken by the lower class index: (indices int32, scores float32)."""
    classes = scores.shape[1]
    k = min(k, classes)
    if k < classes:
        candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        candidates = np.broadcast_to(np.arange(classes), scores.shape)
    values = np.take_along_axis(scores, candidates, axis=1)
    order = np.lexsort((candidates, -values), axis=-1)
    indices = np.take_along_axis(candidates, order, axis=1)
    return indices.astype(np.int32), np.take_along_axis(values, order, axis=1).astype(np.float32)


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def host_model_input(pixels: np.ndarray, contract: ModelContract) -> np.ndarray:
    """uint8 NHWC as is for uint8 models; normalised NCHW floats for `--input float` and foreign models."""
    if contract.input_dtype == "uint8":
        return pixels
    card = contract.card
    return normalize_nhwc_uint8(pixels, card.mean, card.std).astype(
        np.dtype(contract.input_dtype), copy=False
    )


class HostPredictor:
    """CPU provider: plain `session.run`, top-k with numpy."""

    def __init__(self, session, contract: ModelContract, *, topk: int, embeddings: bool):
        self.session = session
        self.contract = contract
        self.topk = topk
        self.heads = contract.card.attributes or ()
        self.outputs = [contract.scores_output] + ([EMBEDDING] if embeddings else [])
        self.outputs += [DOMAIN] if contract.reads_domain else []  # the OOD score (batchrun.predict.review)
        self.outputs += [head.output for head in self.heads]

    def __call__(self, batch: Batch) -> Predictions:
        pixels = np.asarray(batch.pixels)[: len(batch)]  # a torch tensor (DataLoader) or numpy (Ray)
        results = self.session.run(
            self.outputs, {self.contract.input_name: host_model_input(pixels, self.contract)}
        )
        attributes = None
        if self.heads:
            tail = results[len(results) - len(self.heads) :]
            results = results[: len(results) - len(self.heads)]
            attributes = {
                h.name: v.astype(np.float32, copy=False) for h, v in zip(self.heads, tail, strict=True)
            }
        ood = results.pop().astype(np.float32, copy=False) if self.contract.reads_domain else None
        scores = results[0].astype(np.float32, copy=False)
        if self.contract.apply_softmax:
            scores = softmax(scores)
        indices, values = topk_host(scores, self.topk)
        embedding = results[1].astype(np.float32, copy=False) if len(results) > 1 else None
        return Predictions(indices, values, embedding, ood, attributes=attributes)


class BoundPredictor:
    """CUDA / TensorRT: IO binding to fixed-shape device tensors; top-k on the device."""

    def __init__(self, session, contract: ModelContract, *, topk: int, embeddings: bool, batch_size: int):
        import torch

        self.torch = torch
        self.session = session
        self.contract = contract
        self.topk = min(topk, contract.card.num_classes)
        self.device = torch.device("cuda", 0)
        size = contract.card.image_size
        output_types = {o.name: _ORT_TYPES.get(o.type) for o in session.get_outputs()}
        if contract.input_dtype == "uint8":
            self.input = torch.empty((batch_size, size, size, 3), dtype=torch.uint8, device=self.device)
        else:
            dtype = torch.float16 if contract.input_dtype == "float16" else torch.float32
            self.input = torch.empty((batch_size, 3, size, size), dtype=dtype, device=self.device)
            mean, std = pixel_scale(contract.card.mean, contract.card.std)
            self.mean, self.std = (
                torch.from_numpy(mean).to(self.device),
                torch.from_numpy(std).to(self.device),
            )
        self.binding = session.io_binding()
        self._bind(self.binding.bind_input, contract.input_name, self.input)
        self.scores = self._output(
            contract.scores_output, (batch_size, contract.card.num_classes), output_types
        )
        self.embedding = None
        if embeddings:
            self.embedding = self._output(EMBEDDING, (batch_size, contract.embedding_dim), output_types)
        self.domain = self._output(DOMAIN, (batch_size,), output_types) if contract.reads_domain else None
        self.heads = {
            head.name: self._output(head.output, (batch_size, len(head.values)), output_types)
            for head in contract.card.attributes or ()
        }

    def _output(self, name: str, shape: tuple[int, ...], types: dict[str, Any]):
        dtype = self.torch.float16 if types[name] == np.float16 else self.torch.float32
        tensor = self.torch.empty(shape, dtype=dtype, device=self.device)
        self._bind(self.binding.bind_output, name, tensor)
        return tensor

    def _bind(self, bind, name: str, tensor) -> None:
        element = {self.torch.uint8: np.uint8, self.torch.float16: np.float16, self.torch.float32: np.float32}
        bind(name, "cuda", 0, element[tensor.dtype], tuple(tensor.shape), tensor.data_ptr())

    def __call__(self, batch: Batch) -> Predictions:
        torch = self.torch
        rows = len(batch)
        # Pinned host memory -> the bound device buffer, asynchronously on torch's stream.
        if self.contract.input_dtype == "uint8":
            self.input.copy_(batch.pixels, non_blocking=True)
        else:
            pixels = batch.pixels.to(self.device, non_blocking=True)
            self.input.copy_(normalize(pixels.permute(0, 3, 1, 2).float(), self.mean, self.std))
        torch.cuda.current_stream().synchronize()  # ORT runs on its own stream: inputs must be ready
        return self._run(rows)

    def _run(self, rows: int) -> Predictions:
        """Run the bound session; top-k (and the embedding) of the first `rows` rows, from device memory."""
        torch = self.torch
        self.session.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()
        scores = self.scores[:rows].float()
        if self.contract.apply_softmax:
            scores = torch.softmax(scores, dim=1)
        values, indices = torch.topk(scores, self.topk, dim=1)  # sorted, best first
        embedding = None
        if self.embedding is not None:
            embedding = self.embedding[:rows].float().cpu().numpy()
        attributes = {name: t[:rows].float().cpu().numpy() for name, t in self.heads.items()} or None
        ood = None if self.domain is None else self.domain[:rows].float().cpu().numpy()
        return Predictions(
            indices.to(torch.int32).cpu().numpy(),
            values.cpu().numpy().astype(np.float32),
            embedding,
            ood,
            attributes=attributes,
        )


class DevicePredictor(BoundPredictor):
    """Pixels already on the GPU (decoded there, `batchrun.decode.gpu`): the batch's own device
    memory is bound as the model input, no copy at all. The decoder synchronised its stream
    before handing the batch over; ORT's `run` returns when its own stream is done.
    Host pixels, float-input models and other shapes take `BoundPredictor`'s path."""

    def __call__(self, batch: Batch) -> Predictions:
        torch = self.torch
        pixels = batch.pixels
        direct = (
            pixels is not None
            and pixels.is_cuda
            and pixels.is_contiguous()
            and pixels.dtype == torch.uint8
            and self.contract.input_dtype == "uint8"
            and pixels.shape == self.input.shape
        )
        self._bind(self.binding.bind_input, self.contract.input_name, pixels if direct else self.input)
        if not direct:
            return super().__call__(batch)
        return self._run(len(batch))
