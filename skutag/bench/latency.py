"""Model-only latency and throughput: ONNX Runtime sessions and eager PyTorch, measured alike.

Fixed shapes, warm-up first, many repetitions over several random input sets (never
zeros, never one buffer only), per-batch latency percentiles. Throughput is batch size
over the median latency, so the two figures are consistent by construction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from skutag.card import ModelCard


@dataclass(frozen=True)
class Timing:
    batch_size: int
    repetitions: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    @property
    def images_per_s(self) -> float:
        return self.batch_size / (self.p50_ms / 1000.0)

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "images_per_s": self.images_per_s}


def random_inputs(card: ModelCard, batch_size: int, sets: int = 4, seed: int = 0) -> list[np.ndarray]:
    """`sets` distinct random batches in the model's input format (uint8 NHWC or float32 NCHW)."""
    rng = np.random.default_rng(seed)
    size = card.image_size
    if card.input_dtype == "uint8":
        return [rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8) for _ in range(sets)]
    return [rng.standard_normal((batch_size, 3, size, size), dtype=np.float32) for _ in range(sets)]


def time_calls(
    call: Callable[[int], object],
    batch_size: int,
    *,
    warmup: int = 3,
    min_repetitions: int = 10,
    min_seconds: float = 2.0,
    max_repetitions: int = 1000,
) -> Timing:
    """Time `call(i)` (i = repetition number) after `warmup` calls, until both minimums are met."""
    for i in range(warmup):
        call(i)
    latencies = []
    started = time.perf_counter()
    while len(latencies) < max_repetitions and (
        len(latencies) < min_repetitions or time.perf_counter() - started < min_seconds
    ):
        begin = time.perf_counter()
        call(len(latencies))
        latencies.append((time.perf_counter() - begin) * 1000.0)
    values = np.asarray(latencies)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return Timing(batch_size, len(values), float(p50), float(p90), float(p99), float(values.mean()))


def time_session(session, card: ModelCard, batch_size: int, **options) -> Timing:
    """Model-only timing of an ONNX Runtime session at a fixed batch shape."""
    name = session.get_inputs()[0].name
    outputs = [session.get_outputs()[0].name]
    inputs = random_inputs(card, batch_size)
    return time_calls(lambda i: session.run(outputs, {name: inputs[i % len(inputs)]}), batch_size, **options)


def time_torch(model, card: ModelCard, batch_size: int, device: str = "cpu", **options) -> Timing:
    """Model-only timing of the eager PyTorch model on normalised float32 NCHW input."""
    import torch

    rng = np.random.default_rng(0)
    size = card.image_size
    inputs = [
        torch.from_numpy(rng.standard_normal((batch_size, 3, size, size), dtype=np.float32)).to(device)
        for _ in range(4)
    ]

    def call(i: int) -> None:
        with torch.inference_mode():
            model(inputs[i % len(inputs)])
        if device == "cuda":
            torch.cuda.synchronize()

    return time_calls(call, batch_size, **options)
