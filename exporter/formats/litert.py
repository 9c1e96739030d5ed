"""LiteRT `.tflite` (TFLite): litert-torch converts the module (no TensorFlow); int8 through its PT2EQuantizer.

Checked with the `ai-edge-litert` interpreter (XNNPACK on the CPU). The model takes one
uint8 [1, H, W, 3] image (edge is batch 1). The card travels beside it in MODEL.tflite.json.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from skutag.exporter.formats import Job, first_line
from skutag.exporter.graph import edge_example

from skutag.artifacts import FORMATS
from skutag.errors import InputError, SkutagError

TITLE = "LiteRT export"
BATCH = FORMATS["litert"].batch


def export(job: Job, out: Path) -> dict[str, Any]:
    import litert_torch

    module, calibration = job.module, job.calibration
    args = edge_example(job.card.image_size)
    notes: dict[str, Any] = {"converter": "litert-torch", "batch_size": BATCH}
    options: dict[str, Any] = {}
    program: Any = module
    if job.target.precision == "int8":
        assert calibration is not None
        from litert_torch.quantize import pt2e_quantizer as quantizer_module
        from litert_torch.quantize import quant_config
        from skutag.exporter.formats.pt2e import quantise  # torchao: int8 only

        config = quantizer_module.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
        quantizer = quantizer_module.PT2EQuantizer().set_global(config)
        program, quantised = quantise(module, args, quantizer, calibration, fold=False)
        options["quant_config"] = quant_config.QuantConfig(pt2e_quantizer=quantizer)
        notes["quantizer"] = (
            "litert-torch PT2EQuantizer: int8 activations, symmetric per-channel int8 weights; "
            "conv + clamp fused; head in float"
        )
        notes.update(quantised)
    chatter = io.StringIO()  # the converter prints progress bars
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        edge_model = litert_torch.convert(program, args, **options)
        edge_model.export(str(out))
    # The contract: `probs` and `embedding` are float32 (an app reads them as they are). The converter
    # leaves an output 8-bit when the op that makes it is quantised; the float tail (pt2e) prevents
    # that, and this refuses a file where it did not.
    runner = load(out, threads=1)
    notes["outputs"] = [{"name": d["name"], "dtype": np.dtype(d["dtype"]).name} for d in runner.details]
    eight_bit = [o for o in notes["outputs"] if o["dtype"] != "float32"]
    if eight_bit:
        raise SkutagError(
            f"{TITLE}: outputs must be float32, the converter left "
            + ", ".join(f"{o['name']} {o['dtype']}" for o in eight_bit)
        )
    return notes


def report_fields(job: Job, out: Path, notes: dict[str, Any]) -> dict[str, Any]:
    return {}


class _Runner:
    batch_size = BATCH

    def __init__(self, interpreter) -> None:
        self._interpreter = interpreter
        self._input = interpreter.get_input_details()[0]["index"]
        # The outputs in the module's order (probs, embedding, then each attribute head), read from the
        # model's signature, whose outputs the converter names output_<position>: by that position, never
        # by the tensor names' sort order.
        signatures = interpreter.get_signature_list()
        if len(signatures) != 1:
            raise InputError(f"a skutag LiteRT model has one signature, this one has {len(signatures)}")
        by_name = interpreter.get_signature_runner(next(iter(signatures))).get_output_details()
        self.details = [by_name[name] for name in signature_order(list(by_name))]

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        values = self.outputs(pixels)
        return values[0], (values[1] if len(values) > 1 else None)

    def outputs(self, pixels: np.ndarray) -> list[np.ndarray]:
        self._interpreter.set_tensor(self._input, np.ascontiguousarray(pixels))
        self._interpreter.invoke()
        return [self._interpreter.get_tensor(d["index"]).copy() for d in self.details]


def signature_order(names: list[str]) -> list[str]:
    """The signature's output names in the module's output order: `output_<i>` by i, which must run 0..n-1
    (InputError otherwise: a file skutag did not convert)."""
    import re

    positions = {}
    for name in names:
        match = re.fullmatch(r"output_(\d+)", name)
        if match is None:
            raise InputError(f"LiteRT output {name!r} is not named output_<position> (not a skutag export)")
        positions[int(match.group(1))] = name
    if sorted(positions) != list(range(len(names))):
        raise InputError(f"LiteRT outputs {sorted(names)} do not number 0..{len(names) - 1}")
    return [positions[i] for i in range(len(names))]


def load(path: Path, threads: int | None = None) -> _Runner:
    from ai_edge_litert import interpreter as interpreter_module

    try:
        interpreter = interpreter_module.Interpreter(
            model_path=str(path), num_threads=threads or os.cpu_count() or 1
        )
        interpreter.allocate_tensors()
    except Exception as exc:
        raise InputError(f"cannot load LiteRT model {path}: {first_line(exc)}") from exc
    return _Runner(interpreter)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"litert-torch": version("litert-torch"), "ai-edge-litert": version("ai-edge-litert")}
