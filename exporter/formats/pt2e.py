"""PyTorch 2 export quantisation (PT2E), shared by ExecuTorch (XNNPACKQuantizer) and LiteRT (its PT2EQuantizer).

`torch.export` the module at batch 1, insert the quantizer's observers, feed the
calibration images one at a time (observers keep running ranges or fixed-size
histograms, so memory does not grow with the number of images), and convert. The
classifier head (and the softmax after it) stays float, as in int8 ONNX: the
quantizer gets no config for the head's module type, so `probs` is never computed
from 8-bit values.
"""

from __future__ import annotations

import torch

from exporter.graph import ExportModule
from exporter.samples import SampleSet


def example(module: ExportModule, card_size: int) -> tuple[torch.Tensor]:
    """The batch-1 uint8 NHWC example the edge formats are exported with."""
    del module
    return (torch.zeros(1, card_size, card_size, 3, dtype=torch.uint8),)


def quantise(
    module: ExportModule, args: tuple[torch.Tensor], quantizer, calibration: SampleSet, *, fold: bool
):
    """The converted (quantised) GraphModule of `module`, calibrated on every calibration image.

    `fold`: fold the weights' quantize ops into int8 constants (ExecuTorch: XNNPACK consumes
    them; LiteRT's converter wants the quantize ops kept, as its documentation does)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    # No config for the head's type nor the global pooling's: the pooled features (`embedding`), the
    # classifier and the softmax stay float, as in int8 ONNX (the quantizers skip a None config).
    for kind in [type(module.head), *pooling_types(module)]:
        quantizer.module_type_config[kind] = None
    graph = torch.export.export(module, args).module()
    prepared = prepare_pt2e(graph, quantizer)
    move_exported_model_to_eval(prepared)
    with torch.no_grad():
        for image in calibration.pixels:
            prepared(torch.from_numpy(image[None].copy()))
    converted = convert_pt2e(prepared, fold_quantize=fold)
    move_exported_model_to_eval(converted)
    return converted


def pooling_types(module: ExportModule) -> set[type]:
    """Module types of the body's global pooling (torchvision's AdaptiveAvgPool2d, timm's SelectAdaptivePool2d)."""
    return {
        type(sub)
        for sub in module.body.modules()
        if type(sub).__name__ in ("AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "SelectAdaptivePool2d")
    }
