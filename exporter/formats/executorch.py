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
from skutag.exporter.formats import Job, first_line
from skutag.exporter.graph import edge_example

from skutag.artifacts import FORMATS
from skutag.errors import InputError

BATCH = FORMATS["executorch"].batch


def export(job: Job, out: Path) -> dict[str, Any]:
    from executorch import exir
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    module, calibration = job.module, job.calibration
    args = edge_example(job.card.image_size)
    program: Any = module
    notes: dict[str, Any] = {"delegate": "XNNPACK", "batch_size": BATCH}
    if job.target.precision == "int8":
        assert calibration is not None
        from executorch.backends.xnnpack.quantizer import xnnpack_quantizer as qmod
        from skutag.exporter.formats.pt2e import quantise  # torchao: int8 only

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
    lowered = exir.to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    out.write_bytes(lowered.to_executorch().buffer)
    return notes


def report_fields(job: Job, out: Path, notes: dict[str, Any]) -> dict[str, Any]:
    return {}


class _Runner:
    batch_size = BATCH

    def __init__(self, method) -> None:
        self._method = method

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self._method.execute([torch.from_numpy(np.ascontiguousarray(pixels))])
        probs = outputs[0].numpy()
        return probs, (outputs[1].numpy() if len(outputs) > 1 else None)

    def outputs(self, pixels: np.ndarray) -> list[np.ndarray]:
        return [o.numpy() for o in self._method.execute([torch.from_numpy(np.ascontiguousarray(pixels))])]


def load(path: Path) -> _Runner:
    from executorch import runtime

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
