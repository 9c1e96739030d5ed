"""ONNX `.onnx` (and ONNX Runtime's `.ort`): torch.onnx export; fp16 and int8 with ONNX Runtime's own tools.

fp32 is the exported graph; fp16 converts weights and compute keeping the uint8 input
and float32 outputs (`exporter.quantize.to_fp16`); int8 is ORT's static QDQ quantiser,
calibrated on the `--calib` images one at a time, with the int8 target's settings
(`exporter.quantize.QUANTISATION`: `cpu` U8S8, `tensorrt` S8S8), the input's
preprocessing and the tail after the pooled features kept float (verified on the
result). The card is in the file's `metadata_props["skutag.card"]` (with readable keys
beside it) and in the report. `--ort-format` also writes MODEL.ort, the format ONNX
Runtime Mobile loads. Checked with ONNX Runtime on the CPU, at any batch size.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from skutag.exporter import graph, quantize
from skutag.exporter.formats import Job
from skutag.exporter.graph import EMBEDDING, INPUT_NAME, PROBS

from skutag.artifacts import FORMATS
from skutag.errors import SkutagError

log = logging.getLogger(__name__)


def export(job: Job, out: Path) -> dict[str, Any]:
    """Export fp32, convert to the target's precision, write `out` with the card in its metadata."""
    assert job.work is not None
    fp32_path = job.work / "fp32.onnx"
    graph.save(graph.to_onnx(job.module, job.run_card), fp32_path)
    graph.save(_convert(job, fp32_path), out)
    notes: dict[str, Any] = {"batch_size": "dynamic"}
    if job.target.calibrated:
        notes["ort_cpu_graph"] = _conv_fusion(out, job.target.name)
    notes["ort_format"] = _write_ort(out).name if job.ort_format else None
    return notes


def report_fields(job: Job, out: Path, notes: dict[str, Any]) -> dict[str, Any]:
    """The ONNX report's own keys: opset, signature, the .ort file, and ORT's quantiser settings."""
    proto = onnx.load(str(out), load_external_data=False)
    fields: dict[str, Any] = {
        "opset": graph.OPSET,
        "inputs": _signature(proto.graph.input),
        "outputs": _signature(proto.graph.output),
        "ort_format": str(out.with_name(notes["ort_format"])) if notes["ort_format"] else None,
    }
    if job.target.calibrated and job.calibration is not None:
        settings = quantize.QUANTISATION[job.target.int8_target or "cpu"]
        fields["calibration"] = {
            "method": job.calib_method,
            "int8_target": job.target.int8_target,
            "activation_type": settings.activation_type,
            "weight_type": settings.weight_type,
            "per_channel": settings.per_channel,
            "extra_options": settings.extra_options,
            "format": "QDQ",
            "ort_cpu_graph": notes["ort_cpu_graph"],
        }
    return fields


def _convert(job: Job, fp32_path: Path) -> onnx.ModelProto:
    """The target's ModelProto, with the card (its precision set) in the metadata."""
    target = job.target
    if target.calibrated:
        assert job.calibration is not None and job.work is not None  # validate() refused int8 without --calib
        int8_path = job.work / "int8.onnx"
        quantize.to_int8(
            fp32_path,
            int8_path,
            quantize.QUANTISATION[target.int8_target or "cpu"],
            job.calibration,
            job.card,
            input_name=graph.INPUT_NAME,
            input_kind=job.input_kind,
            method=job.calib_method,
        )
        proto = onnx.load(str(int8_path))
        touched = quantize.eight_bit_tail(proto)
        if touched:  # the quantiser did not honour the exclusions: refuse rather than ship it
            raise SkutagError(
                f"int8: nodes after the pooled features use 8-bit tensors: {', '.join(touched)}"
            )
    elif target.precision == "fp16":
        proto = quantize.to_fp16(onnx.load(str(fp32_path)))
    else:
        proto = onnx.load(str(fp32_path))
    # Drop the quantiser's bookkeeping keys; the card and readable keys describe the file.
    kept = [p for p in proto.metadata_props if not p.key.startswith("onnx.")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    graph.set_metadata(proto, job.card)
    return proto


def _signature(values) -> list[dict[str, Any]]:
    return [
        {
            "name": v.name,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
            "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
        }
        for v in values
    ]


def _conv_fusion(path: Path, target: str) -> dict[str, int]:
    """Quantised vs float convs in ORT's optimised CPU graph, and the convs the export kept float on purpose
    (exporter.quantize: a stem read by depthwise convs); any other float conv on the CPU target is a warning."""
    convs = quantize.quantised_conv_summary(quantize.optimised_op_types(path))
    convs["kept_float_convs"] = quantize.kept_float_convs(onnx.load(str(path)))
    if target == "int8-cpu" and convs["float_convs"] > convs["kept_float_convs"]:
        log.warning("%d convs stayed float in ORT's optimised CPU graph of %s", convs["float_convs"], path)
    return convs


def _write_ort(model_path: Path) -> Path:
    """The ORT-format file ONNX Runtime Mobile loads, beside the model (portable optimisations only)."""
    import onnxruntime as ort

    ort_path = model_path.with_suffix(".ort")
    options = ort.SessionOptions()
    # EXTENDED, not ALL: level-3 layout transforms (NCHWc) are specific to the exporting CPU.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(ort_path)
    options.add_session_config_entry("session.save_model_format", "ORT")
    options.log_severity_level = 3
    ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return ort_path


class _Runner:
    batch_size = FORMATS["onnx"].batch

    def __init__(self, session) -> None:
        self._session = session
        self._names = [PROBS] + [o.name for o in session.get_outputs() if o.name == EMBEDDING]

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        values = self._session.run(self._names, {INPUT_NAME: pixels})
        return values[0], (values[1] if len(values) > 1 else None)

    def outputs(self, pixels: np.ndarray) -> list[np.ndarray]:
        return self._session.run(None, {INPUT_NAME: pixels})


def load(path: Path) -> _Runner:
    from skutag.runtime import create_session

    session, _ = create_session(path, "cpu")
    return _Runner(session)


def versions() -> dict[str, str]:
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
