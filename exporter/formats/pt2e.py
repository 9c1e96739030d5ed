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


def quantise(module: ExportModule, args: tuple[torch.Tensor], quantizer, calibration: SampleSet):
    """The converted (quantised) GraphModule of `module`, calibrated on every calibration image."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    # No config for the head's type: its matmul and the softmax stay float (the quantizers skip None).
    quantizer.module_type_config[type(module.head)] = None
    graph = torch.export.export(module, args).module()
    prepared = prepare_pt2e(graph, quantizer)
    move_exported_model_to_eval(prepared)
    with torch.no_grad():
        for image in calibration.pixels:
            prepared(torch.from_numpy(image[None].copy()))
    converted = convert_pt2e(prepared, fold_quantize=False)
    move_exported_model_to_eval(converted)
    return converted
