"""fp32 ONNX -> fp16 or calibrated int8 ONNX, with ONNX Runtime's own tools.

fp16: `onnxruntime.transformers.float16` with `keep_io_types=True` (docs/design.md: the
onnxconverter-common converter broke the Cast after the uint8 input). The uint8
input stays uint8 and the outputs stay float32.

int8: `quant_pre_process` (shape inference and optimisation, e.g. BatchNorm folded
into Conv) and then `quantize_static` in QDQ format, calibrated on real images fed
exactly as batchrun feeds them. Parts of the graph stay float, excluded from
quantisation by node name (`float_nodes`, ORT's `nodes_to_exclude`), for both int8
targets:
- the input's preprocessing (Cast, layout change, normalisation: every node between
  the input and the first Conv), so the pixels are never requantised (a symmetric S8
  quantiser would halve their resolution);
- the stem, when a depthwise conv reads its output (EfficientNet-Lite, MobileNet): the
  first conv, the nodes after it and the depthwise conv(s) reading it, so the stem's output
  is never an 8-bit tensor. Each channel of a depthwise conv reads one input channel, and
  EfficientNet-Lite0's first one (BatchNorm folded in) has kernels whose |weights| sum to up
  to 51: 256 steps over ReLU6's [0, 6] came out of it magnified that much. Keeping those two
  convs float (under 4% of Lite0's multiply-adds) took the demo model's int8 embedding error
  from 0.135 to 0.104 (mean) and its top-1 agreement with PyTorch from 0.938 to 0.969 on 64
  held-out photos (benchmarks/RESULTS.md, "int8 of the default recipe"). A stem read by
  dense convs (ResNet) is quantised as before;
- the tail: the pooling that makes the pooled features and every node after it (the
  classifier Gemm and its weights, Softmax, the `embedding` output), so `probs` and
  `embedding` are never computed from 8-bit values. `eight_bit_tail` checks the result.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from skutag.exporter.samples import SampleSet, batches, model_input
from skutag.exporter.tail import NO_POOLING, walk_tail

from skutag.card import ModelCard
from skutag.errors import SkutagError

log = logging.getLogger(__name__)

# Images per calibration step. ORT's calibration session (graph optimisations off) keeps every
# intermediate tensor of a step alive until the ReduceMin/ReduceMax nodes appended after the graph
# run, so memory grows with this batch: 16 made an int8 ResNet-50 export peak at 5.2 GB RSS, one
# image per step keeps it far under 2 GB at any calibration size (benchmarks/RESULTS.md, issue 20).
CALIB_BATCH = 1
# The ops that make the pooled features: walking back from the outputs, the tail ends at the first one.
POOLING_OPS = frozenset(
    {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "AveragePool", "MaxPool"}
)
# Walking forward from the input, the preprocessing ends at the first op with weights.
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
EIGHT_BIT_TYPES = frozenset({onnx.TensorProto.INT8, onnx.TensorProto.UINT8})
# Conv ops in ORT's optimised CPU graph: quantised kernels, and float ones (a conv the QDQ fusion missed).
QUANTISED_CONV_OPS = frozenset({"QLinearConv", "ConvInteger", "NhwcQLinearConv"})
FLOAT_CONV_OPS = frozenset({"Conv", "FusedConv", "NchwcConv"})


@dataclass(frozen=True)
class Quantisation:
    """ORT static quantisation settings, by name (onnxruntime is imported only when converting)."""

    activation_type: str  # a `QuantType` member name
    weight_type: str
    per_channel: bool
    extra_options: dict[str, Any] = field(default_factory=dict)


# One per int8 target of the ONNX format (skutag.artifacts: `cpu`, `tensorrt`).
QUANTISATION: dict[str, Quantisation] = {
    # U8S8 QDQ: uint8 activations, int8 per-channel weights; every conv fuses into QLinearConv.
    "cpu": Quantisation("QUInt8", "QInt8", per_channel=True),
    # TensorRT reads explicit QDQ and wants symmetric int8 for activations and weights.
    "tensorrt": Quantisation(
        "QInt8",
        "QInt8",
        per_channel=True,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    ),
}


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
        excluded = float_nodes(onnx.load(str(prepared)))
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


def float_nodes(proto: onnx.ModelProto) -> list[str]:
    """Names of the nodes that stay float: the input's preprocessing, a stem read by depthwise convs, and
    the tail (see the module doc)."""
    graph = proto.graph
    nodes = list(graph.node)
    if not all(node.name for node in nodes):
        raise SkutagError("int8: the prepared graph has unnamed nodes; they cannot be excluded by name")
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    keep: dict[str, None] = {}  # ordered set
    stems = _forward_to_weighted(consumers, [i.name for i in graph.input], keep)
    if len(stems) == 1:  # one stem conv: float too when a depthwise conv reads its output
        after: dict[str, None] = {}
        readers = _forward_to_weighted(consumers, list(stems[0].output), after)
        if readers and all(_is_depthwise(node, proto) for node in readers):
            keep.update((name, None) for name in [stems[0].name, *after, *(n.name for n in readers)])
    tail = tail_nodes(proto)
    if not any(node.op_type in POOLING_OPS for node in tail):
        raise SkutagError(NO_POOLING)
    keep.update((node.name, None) for node in tail)
    return list(keep)


def _forward_to_weighted(
    consumers: dict[str, list[onnx.NodeProto]], frontier: list[str], keep: dict[str, None]
) -> list[onnx.NodeProto]:
    """Walk forward from the tensors `frontier`, adding every node before a weighted op to `keep`;
    returns the weighted ops reached (each once)."""
    reached: dict[str, onnx.NodeProto] = {}
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.op_type in WEIGHTED_OPS:
                reached.setdefault(node.name, node)
            elif node.name not in keep:
                keep[node.name] = None
                frontier.extend(node.output)
    return list(reached.values())


def _is_depthwise(node: onnx.NodeProto, proto: onnx.ModelProto) -> bool:
    """A Conv with one input channel per group and more than one group (its weight is [C, 1, kH, kW])."""
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if node.op_type != "Conv" or group <= 1:
        return False
    weight = next((i for i in proto.graph.initializer if i.name == node.input[1]), None)
    return weight is not None and len(weight.dims) == 4 and weight.dims[1] == 1


def tail_nodes(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes between the pooled features and the outputs: walking back from every output along
    float tensors (and 8-bit ones, so Q/DQ pairs count), up to and including the first pooling op."""
    graph = proto.graph
    producers = {name: node for node in graph.node for name in node.output}
    types = tensor_types(proto)

    def inputs_of(node: onnx.NodeProto) -> list[onnx.NodeProto | None]:
        data = (n for n in node.input if n and types.get(n, onnx.TensorProto.FLOAT) in _DATA_TYPES)
        return [producers.get(name) for name in data]

    return walk_tail(
        [producers.get(o.name) for o in graph.output],
        inputs_of,
        lambda node: node.op_type in POOLING_OPS,
        key=lambda node: node.output[0],  # unique in a graph
        skip=lambda node: node is None or node.op_type in ("Shape", "Constant"),  # None: input or weights
    )


def eight_bit_tail(proto: onnx.ModelProto) -> list[str]:
    """Tail nodes (see `tail_nodes`) that consume or produce 8-bit tensors, as `op_type name`; [] is right."""
    types = tensor_types(proto)
    return [
        f"{node.op_type} {node.name}"
        for node in tail_nodes(proto)
        if any(types.get(name) in EIGHT_BIT_TYPES for name in [*node.input, *node.output] if name)
    ]


def tensor_types(proto: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor whose type ONNX shape inference knows (inputs, outputs, initialisers)."""
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*inferred.value_info, *inferred.input, *inferred.output]
    }
    types.update((init.name, init.data_type) for init in inferred.initializer)
    return types


_DATA_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16} | EIGHT_BIT_TYPES
)


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


def kept_float_convs(proto: onnx.ModelProto) -> int:
    """Convs of an int8 QDQ file whose weights are float initialisers (not dequantised): the ones
    `float_nodes` kept float on purpose."""
    weights = {init.name for init in proto.graph.initializer}
    return sum(1 for node in proto.graph.node if node.op_type == "Conv" and node.input[1] in weights)


def quantised_conv_summary(op_types: dict[str, int]) -> dict[str, int]:
    """How many convs ORT fused into quantised kernels and how many stayed float."""
    return {
        "quantised_convs": sum(n for op, n in op_types.items() if op in QUANTISED_CONV_OPS),
        "float_convs": sum(n for op, n in op_types.items() if op in FLOAT_CONV_OPS),
    }
