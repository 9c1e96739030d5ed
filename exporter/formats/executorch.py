"""ExecuTorch `.pte`: torch.export, lowered to the XNNPACK delegate; int8 through XNNPACKQuantizer (PT2E).

Checked by running the program in ExecuTorch's own Python runtime (its pybindings ship
for Linux x86_64 and macOS). The program takes one uint8 [1, H, W, 3] image (edge is
batch 1). The card travels beside it in MODEL.pte.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from skutag.exporter.formats import first_line, require
from skutag.exporter.formats.pt2e import example, quantise
from skutag.exporter.graph import ExportModule
from skutag.exporter.samples import SampleSet

from skutag.card import ModelCard
from skutag.errors import InputError

TITLE = "ExecuTorch export"


def export(
    module: ExportModule, card: ModelCard, out: Path, precision: str, calibration: SampleSet | None
) -> dict[str, Any]:
    exir = require("executorch.exir", "executorch", TITLE)
    xnnpack = require("executorch.backends.xnnpack.partition.xnnpack_partitioner", "executorch", TITLE)
    args = example(module, card.image_size)
    program: Any = module
    notes: dict[str, Any] = {"delegate": "XNNPACK", "batch_size": 1}
    if precision == "int8":
        assert calibration is not None
        qmod = require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "executorch", TITLE)
        config = qmod.get_symmetric_quantization_config(is_per_channel=True)
        quantizer = qmod.XNNPACKQuantizer().set_global(config)
        program, quantised = quantise(module, args, quantizer, calibration, fold=True)
        notes["quantizer"] = (
            "XNNPACKQuantizer: int8 activations, symmetric per-channel int8 weights; conv + clamp fused; "
            "head in float"
        )
        notes.update(quantised)
    with torch.no_grad():
        exported = torch.export.export(program, args)
    lowered = exir.to_edge_transform_and_lower(exported, partitioner=[xnnpack.XnnpackPartitioner()])
    out.write_bytes(lowered.to_executorch().buffer)
    return notes


class _Runner:
    batch_size = 1

    def __init__(self, method) -> None:
        self._method = method

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self._method.execute([torch.from_numpy(np.ascontiguousarray(pixels))])
        probs = outputs[0].numpy()
        return probs, (outputs[1].numpy() if len(outputs) > 1 else None)


def load(path: Path) -> _Runner:
    runtime = require("executorch.runtime", "executorch", "running ExecuTorch programs")
    try:
        method = runtime.Runtime.get().load_program(str(path)).load_method("forward")
    except Exception as exc:
        raise InputError(f"cannot load ExecuTorch program {path}: {first_line(exc)}") from exc
    if method is None:
        raise InputError(f"cannot load ExecuTorch program {path}: no forward method")
    return _Runner(method)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"executorch": version("executorch"), "torchao": version("torchao")}
