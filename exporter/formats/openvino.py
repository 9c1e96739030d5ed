"""OpenVINO IR (`.xml` + `.bin`): `openvino.convert_model`; fp16 weights; int8 through NNCF post-training quantisation.

The model takes uint8 [batch, H, W, 3] (batch dynamic) and carries the card in its
rt_info (`skutag/card`) as well as beside it. int8: NNCF's PTQ calibrated on the
`--calib` images, one image per step (it keeps reduced statistics, not activations),
with two settings:
- the tail (every op from the outputs back to the global pooling, found by walking the
  IR with `exporter.tail.walk_tail`, as int8 ONNX walks its graph) is NNCF's ignored scope,
  so `probs` and `embedding` are never computed from 8-bit values (`float_tail` checks
  the result and the report lists it);
- NNCF's overflow fix off and bias correction off. The overflow fix (on by default for
  the first conv) keeps only 7 bits of its weights, for CPUs without VNNI whose 8-bit
  dot products saturate in 16 bits; on the pretrained EfficientNet-Lite0 (whose stem,
  BatchNorm folded, has wide per-channel ranges) it and bias correction together gave an
  embedding error of 0.50 (gate 0.35), bias correction alone off 0.29 (0.40 on other
  photos: refused), both off 0.22 (benchmarks/RESULTS.md, issue 20). So these IRs assume
  a CPU with VNNI (Intel since Cascade Lake / Ice Lake, AMD since Zen 4) or an Intel
  GPU / NPU; on older x86 CPUs the first conv may saturate, unverified.
Checked with the OpenVINO runtime on the CPU, with f32 inference precision (a
CPU with bf16 support would otherwise compute an fp32 IR in bf16).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skutag.exporter import graph
from skutag.exporter.formats import Job, first_line
from skutag.exporter.graph import EMBEDDING, INPUT_NAME, PROBS
from skutag.exporter.tail import walk_tail

from skutag.card import ModelCard
from skutag.errors import InputError, SkutagError

TITLE = "OpenVINO export"
CARD_KEY = ["skutag", "card"]


def export(job: Job, out: Path) -> dict[str, Any]:
    import openvino as ov

    module, card, calibration, precision = job.module, job.card, job.calibration, job.target.precision
    size = card.image_size
    example = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    with torch.no_grad():
        model = ov.convert_model(
            module, example_input=(example,), input=[ov.PartialShape([-1, size, size, 3])]
        )
    model.inputs[0].set_names({INPUT_NAME})
    for output, name in zip(model.outputs, graph.output_names(card, module.embeddings), strict=True):
        output.set_names({name})
    notes: dict[str, Any] = {"batch_size": "dynamic"}
    if precision == "int8":
        assert calibration is not None
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

        dataset = nncf.Dataset(calibration.pixels, lambda image: image[None])
        tail = [node.get_friendly_name() for node in tail_nodes(model)]
        chatter = io.StringIO()
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            model = nncf.quantize(
                model,
                dataset,
                subset_size=len(calibration),
                ignored_scope=nncf.IgnoredScope(names=tail),
                advanced_parameters=AdvancedQuantizationParameters(
                    overflow_fix=OverflowFix.DISABLE, disable_bias_correction=True
                ),
            )
        notes["quantizer"] = (
            "NNCF PTQ (mixed preset: asymmetric int8 activations, symmetric per-channel int8 weights), "
            "overflow fix and bias correction off (assumes VNNI); the tail from the global pooling on in float"
        )
        notes["float_tail"] = float_tail(model)
    model.set_rt_info(card.to_json(), CARD_KEY)
    ov.save_model(model, str(out), compress_to_fp16=precision == "fp16")
    notes["files"] = [out.name, out.with_suffix(".bin").name]
    return notes


def report_fields(job: Job, out: Path, notes: dict[str, Any]) -> dict[str, Any]:
    return {}


# The ops that make the pooled features (walking back from the outputs, the tail ends at the first one).
POOLING = frozenset({"ReduceMean", "ReduceMax", "AvgPool", "MaxPool", "AdaptiveAvgPool", "AdaptiveMaxPool"})


def tail_nodes(model) -> list:
    """The IR's ops from the outputs back to the global pooling (inclusive); shape arithmetic is not followed.

    SkutagError when a path from an output reaches the input without a pooling op."""
    return walk_tail(
        [result.input_value(0).get_node() for result in model.get_results()],
        lambda node: [i.get_source_output().get_node() for i in node.inputs()],
        lambda node: node.get_type_name() in POOLING,
        key=lambda node: node.get_friendly_name(),
        skip=lambda node: node.get_type_name() in ("Constant", "ShapeOf"),
        is_input=lambda node: node.get_type_name() == "Parameter",
    )


def float_tail(model) -> list[str]:
    """Op types of the quantised IR's tail; SkutagError if NNCF put a FakeQuantize in it (an 8-bit tail)."""
    kinds = sorted(node.get_type_name() for node in tail_nodes(model))
    if "FakeQuantize" in kinds:
        raise SkutagError(f"{TITLE}: NNCF quantised the tail after the pooled features ({kinds})")
    return kinds


def read_card(path: Path) -> ModelCard:
    """The card in the IR's rt_info."""
    import openvino as ov

    return ModelCard.from_json(ov.Core().read_model(str(path)).get_rt_info(CARD_KEY).astype(str))


class _Runner:
    batch_size = None

    def __init__(self, compiled) -> None:
        self._compiled = compiled
        self._names = [next(iter(o.get_names())) for o in compiled.outputs]

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        result = self._compiled(np.ascontiguousarray(pixels))
        values = {name: result[i] for i, name in enumerate(self._names)}
        return values[PROBS], values.get(EMBEDDING)

    def outputs(self, pixels: np.ndarray) -> list[np.ndarray]:
        result = self._compiled(np.ascontiguousarray(pixels))
        return [result[i] for i in range(len(self._names))]


def load(path: Path, threads: int | None = None) -> _Runner:
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        compiled = ov.Core().compile_model(str(path), "CPU", config)
    except Exception as exc:
        raise InputError(f"cannot load OpenVINO model {path}: {first_line(exc)}") from exc
    return _Runner(compiled)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"openvino": version("openvino"), "nncf": version("nncf")}
