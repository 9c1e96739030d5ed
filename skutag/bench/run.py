"""`skutag bench`: every artifact, device and batch size side by side.

Model-only latency and throughput come from `skutag.bench.latency` on the session `skutag
run` would open (`batchrun.predict.infer.open_session`: the same contract checks and the same
provider options from the export-target table, TensorRT with a profile of the timed batch
size); end-to-end throughput runs the real `skutag run` pipeline and reads its
`_summary.json`; accuracy runs `skutag eval` and reads its `metrics.json`. So bench
measures exactly what users run, through the same public contracts, and never
re-implements a stage.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skutag.artifacts import format_of
from skutag.bench.latency import Timing, random_inputs, time_calls, time_session, time_torch
from skutag.errors import InputError

log = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    models: list[Path]
    out: Path
    batch_sizes: list[int]
    devices: list[str]
    images: Path | None = None
    data: Path | None = None
    baseline_run: Path | None = None
    workers: int | None = None
    min_seconds: float = 2.0
    warmup: int = 3


@dataclass
class Row:
    """One artifact on one device at one batch size."""

    artifact: str
    precision: str
    device: str
    batch_size: int
    size_mb: float | None
    timing: Timing
    accuracy: float | None = None
    end_to_end_images_per_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def end_to_end_ratio(self) -> float | None:
        if self.end_to_end_images_per_s is None:
            return None
        return self.end_to_end_images_per_s / self.timing.images_per_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "precision": self.precision,
            "device": self.device,
            "batch_size": self.batch_size,
            "size_mb": self.size_mb,
            "accuracy": self.accuracy,
            **{k: v for k, v in self.timing.to_dict().items() if k != "batch_size"},
            "end_to_end_images_per_s": self.end_to_end_images_per_s,
            "end_to_end_ratio": self.end_to_end_ratio,
            **self.extra,
        }


def run_bench(config: BenchConfig, progress=None) -> list[Row]:
    """Measure every (model, device, batch size); the torch baseline first when asked for."""
    from skutag.batchrun.predict.infer import open_session
    from skutag.batchrun.predict.model import read_contract
    from skutag.runtime import model_card, runtime_target

    rows: list[Row] = []
    if config.baseline_run is not None:
        rows.extend(_torch_baseline(config, progress))
    work = tempfile.TemporaryDirectory(prefix="skutag-bench-twins-")
    models: list[tuple[Path, str]] = []
    for model in config.models:
        models.append((model, model.name))
        card = model_card(model) if format_of(model) in (None, "onnx") else None
        if card is not None and card.attributes:  # the heads' cost: the single-label twin beside it
            from skutag.bench.heads import label_only

            models.append((label_only(model, Path(work.name)), f"{model.name} (label only)"))
    for model, name in models:
        if format_of(model) not in (None, "onnx"):
            rows.extend(_edge_rows(model, config, progress))
            continue
        if model_card(model) is None:
            raise InputError(f"{model} has no skutag card; bench needs the card's input size")
        contract = read_contract(model)
        card = contract.card
        heads = len(card.attributes or ())
        twin = name != model.name
        accuracy = _accuracy(model, config) if config.data else None
        for device in config.devices:
            session = None
            for batch_size in config.batch_sizes:
                if session is None or device == "tensorrt":  # TensorRT: one profile per batch size, as run
                    session = None  # release the previous engine first
                    session, info = open_session(contract, device, batch_size=batch_size)
                _say(progress, f"{model.name} on {info.device}, batch {batch_size}")
                timing = time_session(
                    session, card, batch_size, warmup=config.warmup, min_seconds=config.min_seconds
                )
                end_to_end = _end_to_end(model, config, info.device, batch_size) if config.images else None
                rows.append(
                    Row(
                        name,
                        card.precision,
                        info.device,
                        batch_size,
                        model.stat().st_size / 2**20,
                        timing,
                        accuracy,
                        end_to_end,
                        {
                            "providers": info.providers,
                            "target": runtime_target(card).name,
                            **({"heads": heads} if heads or twin else {}),
                        },
                    )
                )
            del session
    work.cleanup()
    return rows


def _edge_rows(model: Path, config: BenchConfig, progress) -> list[Row]:
    """An ExecuTorch / LiteRT / OpenVINO / Core ML file in its own runtime on the CPU (exporter.formats).

    The file is checked against the sha256 its export recorded before its runtime opens it.
    Files that take one batch size (ExecuTorch, LiteRT, Core ML: batch 1) are timed at that size only.
    """
    from skutag.exporter import formats

    if not any(d in ("auto", "cpu") for d in config.devices):
        raise InputError(f"{model}: edge formats are measured on the CPU here; add --device cpu")
    fmt, card, runner = formats.load_runner(model)
    accuracy = _edge_accuracy(runner, card, config.data) if config.data else None
    inputs = random_inputs(card, 1)
    rows = []
    for batch_size in config.batch_sizes:
        if runner.batch_size not in (None, batch_size):
            log.info(
                "%s takes batch %d only; batch %d not measured", model.name, runner.batch_size, batch_size
            )
            continue
        _say(progress, f"{model.name} ({fmt.title}) on cpu, batch {batch_size}")
        batch = [np.repeat(x, batch_size, axis=0) for x in inputs] if batch_size > 1 else inputs
        timing = time_calls(
            lambda i, b=batch: runner(b[i % len(b)]),
            batch_size,
            warmup=config.warmup,
            min_seconds=config.min_seconds,
        )
        extra = {"format": fmt.name, "target": fmt.platform}
        rows.append(
            Row(
                model.name,
                card.precision,
                "cpu",
                batch_size,
                formats.size_bytes(model) / 2**20,
                timing,
                accuracy,
                None,
                extra,
            )
        )
    return rows


def _edge_accuracy(runner, card, data: Path) -> float:
    """Top-1 accuracy on an ImageFolder tree whose folder names are the card's classes."""
    from skutag.exporter import formats
    from skutag.exporter.samples import image_files
    from skutag.images import ImageError, model_pixels

    files = [f for f in image_files(data) if f.parent.name in card.classes]
    if not files:
        raise InputError(f"--data {data}: no image under a folder named after one of the model's classes")
    correct = total = 0
    for start in range(0, len(files), 32):
        chunk, labels = [], []
        for path in files[start : start + 32]:
            try:
                chunk.append(model_pixels(path, card))
            except ImageError:
                continue
            labels.append(card.classes.index(path.parent.name))
        if chunk:
            probs, _ = formats.run_all(runner, np.stack(chunk))
            correct += int((probs.argmax(axis=1) == np.asarray(labels)).sum())
            total += len(labels)
    return correct / max(total, 1)


def _torch_baseline(config: BenchConfig, progress) -> list[Row]:
    import torch

    from skutag.trainer.weights import load_trained

    device = "cuda" if "cuda" in config.devices and torch.cuda.is_available() else "cpu"
    model, card = load_trained(config.baseline_run, device)
    rows = []
    for batch_size in config.batch_sizes:
        _say(progress, f"eager PyTorch on {device}, batch {batch_size}")
        timing = time_torch(
            model, card, batch_size, device, warmup=config.warmup, min_seconds=config.min_seconds
        )
        end_to_end = _torch_end_to_end(model, card, config, device, batch_size) if config.images else None
        rows.append(
            Row(f"eager PyTorch ({card.arch})", "fp32", device, batch_size, None, timing, None, end_to_end)
        )
    return rows


def _torch_end_to_end(model, card, config: BenchConfig, device: str, batch_size: int) -> float:
    from skutag.bench.baselines import plain_torch_loop

    return plain_torch_loop(
        model, card, config.images, batch_size=batch_size, device=device, workers=config.workers
    )


def _end_to_end(model: Path, config: BenchConfig, device: str, batch_size: int) -> float:
    """images/s of a real batch run (`skutag run`'s own engine) over --images, from its summary."""
    from skutag.batchrun.api import run_catalog
    from skutag.batchrun.options import RunOptions

    options = RunOptions(device=device, batch_size=batch_size, max_error_rate=1.0, workers=config.workers)
    with tempfile.TemporaryDirectory(prefix="skutag-bench-") as tmp:
        summary = run_catalog(model, [str(config.images)], f"{tmp}/out", options)
    return float(summary.images_per_s)


def _accuracy(model: Path, config: BenchConfig) -> float:
    """Top-1 accuracy from the trainer's evaluation of MODEL on --data (through the model's own runtime)."""
    from skutag.trainer.evaluate import evaluate

    with tempfile.TemporaryDirectory(prefix="skutag-bench-") as tmp:
        metrics = evaluate(model, config.data, f"{tmp}/report", gradcam=False)
    return float(metrics["accuracy"])


def _say(progress, text: str) -> None:
    if progress is not None:
        progress(text)
    log.info(text)
