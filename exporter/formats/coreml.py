"""Core ML `.mlpackage` (ML program): coremltools converts the torch.export program; fp32 or fp16 compute.

Core ML runs models only on Apple platforms: elsewhere the file is converted and its
metadata written, and the report says plainly that its parity is unverified. Core ML
ML programs take no uint8 tensors, so the input is float32 [1, H, W, 3] holding the
0-255 pixel values (the module casts them the same way); preprocessing and softmax are
inside. int8 is not offered: Core ML's activation quantisation calibrates by running
the model, which needs its runtime. The card is in the package's user-defined metadata
(`skutag.card`) and beside it.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skutag.exporter import graph
from skutag.exporter.formats import Job, first_line
from skutag.exporter.graph import EMBEDDING, INPUT_NAME, PROBS

from skutag.artifacts import FORMATS
from skutag.card import METADATA_KEY, ModelCard
from skutag.errors import InputError

BATCH = FORMATS["coreml"].batch


def export(job: Job, out: Path) -> dict[str, Any]:
    import coremltools as ct

    module, card, precision = job.module, job.card, job.target.precision
    size = card.image_size
    example = torch.zeros(1, size, size, 3)  # float32 holding pixel values: Core ML has no uint8 inputs
    with torch.no_grad():
        program = torch.export.export(module, (example,)).run_decompositions({})
    outputs = [ct.TensorType(name=name) for name in graph.output_names(job.card, module.embeddings)]
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        model = ct.convert(
            program,
            inputs=[ct.TensorType(name=INPUT_NAME, shape=(1, size, size, 3), dtype=np.float32)],
            outputs=outputs,
            minimum_deployment_target=ct.target.iOS17,
            compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        )
    model.user_defined_metadata[METADATA_KEY] = card.to_json()
    model.short_description = f"skutag {card.arch} classifier, {card.num_classes} classes, {precision}"
    if out.exists():
        shutil.rmtree(out)
    model.save(str(out))
    return {
        "batch_size": BATCH,
        "input": "float32 [1, H, W, 3] holding 0-255 RGB pixel values",
        "target": "iOS17",
    }


def report_fields(job: Job, out: Path, notes: dict[str, Any]) -> dict[str, Any]:
    return {}


def read_card(path: Path) -> ModelCard:
    """The card in the package's user-defined metadata (readable without the Core ML runtime)."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    return ModelCard.from_json(spec.description.metadata.userDefined[METADATA_KEY])


class _Runner:
    batch_size = BATCH

    def __init__(self, model) -> None:
        self._model = model

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        result = self._model.predict({INPUT_NAME: pixels.astype(np.float32)})
        return np.asarray(result[PROBS]), (np.asarray(result[EMBEDDING]) if EMBEDDING in result else None)

    def outputs(self, pixels: np.ndarray) -> list[np.ndarray]:
        result = self._model.predict({INPUT_NAME: pixels.astype(np.float32)})
        names = [o.name for o in self._model.get_spec().description.output]
        return [np.asarray(result[name]) for name in names]


def load(path: Path) -> _Runner:
    import coremltools as ct

    try:
        return _Runner(ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY))
    except Exception as exc:
        raise InputError(f"cannot load Core ML model {path}: {first_line(exc)}") from exc


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"coremltools": version("coremltools")}
