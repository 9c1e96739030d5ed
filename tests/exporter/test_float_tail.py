"""The float tail: from the outputs back to the global pooling, on an ONNX graph and on a torch.fx graph."""

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from skutag.exporter.quantize import float_nodes, tail_nodes

from skutag.errors import SkutagError


def _classifier(pooled: bool) -> onnx.ModelProto:
    """image -> Conv -> Relu [-> GlobalAveragePool] -> Flatten -> Gemm -> Softmax (probs), and an embedding."""
    weights = [
        helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], [0.1] * 108),
        helper.make_tensor(
            "fc", TensorProto.FLOAT, [2, 4 if pooled else 4 * 6 * 6], [0.1] * (8 if pooled else 288)
        ),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
    ]
    if pooled:
        nodes.append(helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"))
    nodes += [
        helper.make_node("Flatten", ["p" if pooled else "r"], ["embedding"], name="flatten"),
        helper.make_node("Gemm", ["embedding", "fc"], ["logits"], name="gemm", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 2]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, None),
        ],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_tail_is_everything_after_the_pooling_and_nothing_before():
    names = sorted(node.name for node in tail_nodes(_classifier(pooled=True)))
    assert names == ["flatten", "gemm", "pool", "softmax"]  # the conv and its ReLU stay quantisable


def test_onnx_int8_keeps_the_tail_float_and_refuses_a_graph_without_pooled_features():
    assert {"pool", "flatten", "gemm", "softmax"} <= set(float_nodes(_classifier(pooled=True)))
    assert "relu" not in float_nodes(_classifier(pooled=True))
    with pytest.raises(SkutagError, match="cannot find the pooled features"):
        float_nodes(_classifier(pooled=False))


class _Pooled(torch.nn.Module):
    def __init__(self, pooled: bool) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4 if pooled else 4 * 6 * 6, 2)
        self.pooled = pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1) if self.pooled else x
        return self.fc(torch.flatten(x, 1)).softmax(1)


@pytest.mark.edge
def test_pt2e_tail_stops_at_the_pooling_and_refuses_a_graph_without_one():
    pytest.importorskip("torchao")  # the PT2E quantizer's home (skutag[executorch] / [litert])
    from skutag.exporter.formats.pt2e import tail_nodes as fx_tail_nodes

    sample = (torch.rand(1, 3, 8, 8),)
    graph = torch.export.export(_Pooled(pooled=True).eval(), sample).module()
    targets = {str(node.target) for node in fx_tail_nodes(graph)}
    assert any("adaptive_avg_pool2d" in t or "mean" in t for t in targets)
    assert not any("conv2d" in t or "relu" in t for t in targets)
    unpooled = torch.export.export(_Pooled(pooled=False).eval(), sample).module()
    with pytest.raises(SkutagError, match="cannot find the pooled features"):
        fx_tail_nodes(unpooled)
