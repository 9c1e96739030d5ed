"""PyTorch 2 export quantisation (PT2E), shared by ExecuTorch (XNNPACKQuantizer) and LiteRT (its PT2EQuantizer).

`torch.export` the module at batch 1, insert the quantizer's observers, feed the
calibration images one at a time (observers keep running ranges or fixed-size
histograms, so memory does not grow with the number of images), and convert.

Two things the stock quantizers get wrong for int8 image models, fixed here through the
quantizer's own annotation API (`EdgeQuantizer`) and module-type config:
- A clamp after a conv (ReLU6 = `hardtanh(0, 6)`, MobileNet's and EfficientNet-Lite's
  activation) is annotated as sharing the conv's output observer, so the conv's output
  is quantised over its pre-activation range (EfficientNet-Lite0's stem: -75..+69, 11
  int8 steps left for the 0..6 that ReLU6 passes) and the whole network drifts (the
  pretrained Lite0 export had top-1 agreement 0.875 and embedding error 0.72). The
  quantizers already fuse conv + ReLU (one observer after the ReLU); `EdgeQuantizer` does
  the same for conv + clamp, as ONNX Runtime's quantiser and the XNNPACK and LiteRT
  kernels (a conv with a fused output clamp) do.
- The tail: a module-type config of None does not keep the global pooling float (the
  quantizers propagate their observers through pooling and reshapes), so the pooled
  features (`embedding`) came out of an int8 tensor. `EdgeQuantizer` removes the
  annotations of every node from the outputs back to the global pooling (the same tail
  int8 ONNX keeps float, found by the same walk: `exporter.tail.walk_tail`), so the
  pooling, the classifier and the softmax run in float and `probs` and `embedding` are
  never computed from 8-bit values. `float_tail` lists the ops that stayed float (the
  report and the tests check it).
"""

from __future__ import annotations

import torch
from skutag.exporter.graph import ExportModule, edge_example
from skutag.exporter.samples import SampleSet
from skutag.exporter.tail import walk_tail
from torch.fx import GraphModule, Node

ANNOTATION = "quantization_annotation"  # the node.meta key PT2E quantizers annotate under
CONVS = frozenset({torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default})
# The ops that make the pooled features (walking back from the outputs, the tail ends at the first one).
POOLING = frozenset(
    {
        torch.ops.aten.mean.dim,
        torch.ops.aten.adaptive_avg_pool2d.default,
        torch.ops.aten.adaptive_max_pool2d.default,
        torch.ops.aten.amax.default,
        torch.ops.aten.avg_pool2d.default,
        torch.ops.aten.max_pool2d.default,
    }
)
CLAMPS = frozenset(
    {
        torch.ops.aten.hardtanh.default,
        torch.ops.aten.hardtanh_.default,
        torch.ops.aten.clamp.default,
        torch.ops.aten.clamp_.default,
    }
)


def example(module: ExportModule, card_size: int) -> tuple[torch.Tensor]:
    """The batch-1 uint8 NHWC example the edge formats are exported with (`graph.edge_example`)."""
    del module
    return edge_example(card_size)


def _quantizer_base():
    from torchao.quantization.pt2e.quantizer import Quantizer

    return Quantizer


class EdgeQuantizer(_quantizer_base()):
    """A PT2E quantizer (`base`) with conv + clamp fused and the tail left float.

    After `base` annotates the graph: every conv whose only user is a clamp loses its
    output annotation and the clamp gets its own output observer (`spec`: the base
    config's output activation), exactly as the quantizers treat conv + ReLU (lowering
    fuses the clamp into the quantised conv: XNNPACK's and TFLite's convs take an output
    min/max); then every node of the tail (`tail_nodes`) loses its annotation.
    """

    def __init__(self, base, spec) -> None:
        super().__init__()
        self.base = base
        self.spec = spec
        self.fused: list[str] = []

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        return self.base.transform_for_annotation(model)

    def validate(self, model: GraphModule) -> None:
        self.base.validate(model)

    def annotate(self, model: GraphModule) -> GraphModule:
        from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

        self.base.annotate(model)
        for node in model.graph.nodes:
            conv = _clamped_conv(node)
            if conv is None:
                continue
            annotation = conv.meta.get(ANNOTATION)
            if annotation is None or annotation.output_qspec is None:
                continue  # a conv the base left float (the head's, a filtered one): its clamp stays float too
            annotation.output_qspec = None
            node.meta[ANNOTATION] = QuantizationAnnotation(output_qspec=self.spec, _annotated=True)
            self.fused.append(conv.name)
        for node in tail_nodes(model):
            node.meta.pop(ANNOTATION, None)
        return model


def tail_nodes(model: GraphModule) -> list[Node]:
    """The nodes from the outputs back to the global pooling that makes the pooled features (inclusive).

    SkutagError when a path from an output reaches the input without a pooling op."""
    output = next(n for n in model.graph.nodes if n.op == "output")
    return walk_tail(
        output.all_input_nodes,
        lambda node: node.all_input_nodes,
        lambda node: node.target in POOLING,
        skip=lambda node: node.op != "call_function",  # weights are get_attr nodes in an unlifted graph
        is_input=lambda node: node.op == "placeholder",  # the image
    )


def _clamped_conv(node: Node) -> Node | None:
    """The conv `node` clamps, when `node` is a clamp whose input is a conv with no other user."""
    if node.op != "call_function" or node.target not in CLAMPS:
        return None
    producer = node.args[0]
    if not isinstance(producer, Node) or producer.target not in CONVS or len(producer.users) != 1:
        return None
    return producer


def quantise(
    module: ExportModule, args: tuple[torch.Tensor], quantizer, calibration: SampleSet, *, fold: bool
) -> tuple[GraphModule, dict[str, object]]:
    """The converted (quantised) GraphModule of `module`, calibrated on every calibration image, and notes.

    `quantizer` has its global config set; `fold`: fold the weights' quantize ops into int8
    constants (ExecuTorch: XNNPACK consumes them; LiteRT's converter wants the quantize ops
    kept, as its documentation does)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    # No config for the head's type nor the global pooling's: the pooled features (`embedding`), the
    # classifier and the softmax stay float, as in int8 ONNX (the quantizers skip a None config).
    for kind in [type(module.head), *pooling_types(module)]:
        quantizer.module_type_config[kind] = None
    fusing = EdgeQuantizer(quantizer, quantizer.global_config.output_activation)
    graph = torch.export.export(module, args).module()
    prepared = prepare_pt2e(graph, fusing)
    move_exported_model_to_eval(prepared)
    with torch.no_grad():
        for image in calibration.pixels:
            prepared(torch.from_numpy(image[None].copy()))
    converted = convert_pt2e(prepared, fold_quantize=fold)
    move_exported_model_to_eval(converted)
    notes = {"conv_clamp_fused": len(fusing.fused), "float_tail": float_tail(converted)}
    return converted, notes


def float_tail(converted: GraphModule) -> list[str]:
    """The compute ops between the outputs and the last quantised tensor, walking back: what stays float.

    Walks back from every output until a dequantize op (the last 8-bit value on that path);
    returns the op names (aten overload names, e.g. `softmax`, `linear`, `mean`) in graph order."""
    output = next(n for n in converted.graph.nodes if n.op == "output")
    floats = walk_tail(
        output.all_input_nodes,
        lambda node: node.all_input_nodes,
        lambda node: False,  # no pooling stop: the walk ends at the dequantize ops
        skip=lambda node: node.op != "call_function" or _is_dequantize(node),
    )
    order = {node: i for i, node in enumerate(converted.graph.nodes)}
    return [_op_name(n) for n in sorted(floats, key=order.__getitem__) if not _is_quantize(n)]


def _is_dequantize(node: Node) -> bool:
    return "dequantize" in _op_name(node)


def _is_quantize(node: Node) -> bool:
    return "quantize" in _op_name(node)


def _op_name(node: Node) -> str:
    target = node.target
    name = getattr(target, "_opname", None) or getattr(target, "__name__", str(target))
    return str(name)


def pooling_types(module: ExportModule) -> set[type]:
    """Module types of the body's global pooling (torchvision's AdaptiveAvgPool2d, timm's SelectAdaptivePool2d)."""
    return {
        type(sub)
        for sub in module.body.modules()
        if type(sub).__name__ in ("AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "SelectAdaptivePool2d")
    }
