"""fp32 ONNX -> fp16 or calibrated int8 ONNX, with ONNX Runtime's own tools.

fp16: `onnxruntime.transformers.float16` with `keep_io_types=True` (DESIGN.md: the
onnxconverter-common converter broke the Cast after the uint8 input). The uint8
input stays uint8 and the outputs stay float32.

int8: `quant_pre_process` (shape inference and optimisation, e.g. BatchNorm folded
into Conv) and then `quantize_static` in QDQ format, calibrated on real images fed
exactly as batchrun feeds them. The uint8 input needs no special handling: the
quantiser only quantises float tensors, so the Cast and normalisation at the start
stay float and the first QuantizeLinear sits before the first Conv. Softmax is
excluded so `probs` keeps full float resolution instead of 256 levels.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx

from exporter.samples import SampleSet, batches, model_input
from exporter.targets import Quantisation
from skutag.card import ModelCard

log = logging.getLogger(__name__)

CALIB_BATCH = 16
# Ops whose outputs must stay float: probabilities must not collapse to 256 levels.
NEVER_QUANTISED = ("Softmax",)
# Conv ops in ORT's optimised CPU graph: quantised kernels, and float ones (a conv the QDQ fusion missed).
QUANTISED_CONV_OPS = frozenset({"QLinearConv", "ConvInteger", "NhwcQLinearConv"})
FLOAT_CONV_OPS = frozenset({"Conv", "FusedConv", "NchwcConv"})


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and compute in fp16; inputs and outputs keep their types (uint8 in, float32 out)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=False)
    del converted.metadata_props[:]
    converted.metadata_props.extend(proto.metadata_props)
    return converted


def make_reader(samples: SampleSet, card: ModelCard, input_name: str, input_kind: str):
    """A `CalibrationDataReader` over the decoded images, in fixed order and batch size.

    It supports ORT's strided calibration (`__len__`, `set_range`), which we use with a
    stride of one batch: ranges are merged batch by batch instead of ORT holding every
    intermediate tensor of every calibration image in memory (tens of GB for ResNet-50
    at 224 px), and the histogram calibrators never see batches of unequal size.
    """
    from onnxruntime.quantization import CalibrationDataReader

    chunks = list(batches(samples.pixels, CALIB_BATCH))

    class ImageReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.set_range(0, len(chunks))

        def __len__(self) -> int:
            return len(chunks)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._batches = iter(chunks[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: model_input(batch, card, input_kind)}

    return ImageReader()


def to_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    quantisation: Quantisation,
    samples: SampleSet,
    card: ModelCard,
    *,
    input_name: str,
    input_kind: str,
    method: str = "minmax",
) -> None:
    """Statically quantise `fp32_path` into `out_path` (QDQ), calibrated on `samples`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with tempfile.TemporaryDirectory(prefix="skutag-int8-") as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        excluded = [
            node.name for node in onnx.load(str(prepared)).graph.node if node.op_type in NEVER_QUANTISED
        ]
        chatter = io.StringIO()  # ORT's calibrators print progress to stdout; keep it for --verbose
        with contextlib.redirect_stdout(chatter):
            quantize_static(
                str(prepared),
                str(out_path),
                make_reader(samples, card, input_name, input_kind),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType[quantisation.activation_type],
                weight_type=QuantType[quantisation.weight_type],
                per_channel=quantisation.per_channel,
                nodes_to_exclude=excluded,
                calibrate_method=methods[method],
                extra_options={"CalibStridedMinMax": 1, **quantisation.extra_options},
                calibration_providers=["CPUExecutionProvider"],
            )
        log.debug("onnxruntime.quantization: %s", chatter.getvalue().strip())


def optimised_op_types(path: str | Path, level: str = "extended") -> dict[str, int]:
    """Op type -> count in ONNX Runtime's CPU-optimised graph of `path` (to see which convs fused)."""
    from collections import Counter

    import onnxruntime as ort

    levels = {
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    with tempfile.TemporaryDirectory(prefix="skutag-optimised-") as work:
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[level]
        options.optimized_model_filepath = str(Path(work) / "optimised.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    return dict(Counter(node.op_type for node in graph.node))


def quantised_conv_summary(op_types: dict[str, int]) -> dict[str, int]:
    """How many convs ORT fused into quantised kernels and how many stayed float."""
    return {
        "quantised_convs": sum(n for op, n in op_types.items() if op in QUANTISED_CONV_OPS),
        "float_convs": sum(n for op, n in op_types.items() if op in FLOAT_CONV_OPS),
    }
