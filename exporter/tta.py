"""Flip test-time augmentation inside the exported graph (`skutag export --tta flip`).

`FlipTTA` wraps an `exporter.graph.ExportModule`: the batch and its horizontal mirror go through
the model as one batch of twice the size (the backbone's work doubles), and the outputs are
averaged per image: the calibrated probabilities `probs` and every attribute head's `attr.<name>`
are the mean of the two views'. The `embedding` output is the unflipped image's pooled features,
exactly what the model without TTA gives: the review section's class means and thresholds were
fitted on those features and an index built from another export of the model stays comparable.

uint8 pixels are cast to float first, as the wrapped module does (the first node on the uint8
input stays the Cast, and no quantiser observes an integer tensor). The mean is written as `(a + b) * 0.5` of the two halves, not as a reduction, so the int8 float
tail (exporter.tail: walking back from the outputs to the first pooling op) still ends at the
global pooling and keeps the averaging, the classifier and the softmax in float.
"""

from __future__ import annotations

import torch
from torch import nn

from skutag.card import TTA_MODES

TTA_CHOICES = ("none", *TTA_MODES)  # `skutag export --tta`


class FlipTTA(nn.Module):
    """An ExportModule whose outputs average the image and its horizontal mirror (see the module doc)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.input_kind, self.embeddings = inner.input_kind, inner.embeddings
        self.width_dim = 2 if inner.input_kind == "uint8" else 3  # NHWC pixels or NCHW floats

    # The parts the format backends read from an ExportModule (exporter.formats.pt2e: the head's and the
    # pooling's module types stay float), the wrapped module's own.
    @property
    def head(self) -> nn.Module:
        return self.inner.head

    @property
    def body(self) -> nn.Module:
        return self.inner.body

    @property
    def attributes(self) -> nn.Module | None:
        return self.inner.attributes

    def forward(self, image: torch.Tensor):
        if self.input_kind == "uint8":  # the Cast stays the first node on the uint8 input (exporter.graph);
            image = image.to(torch.float32)  # the wrapped module's own cast of a float tensor is a no-op
        both = torch.cat([image, image.flip(self.width_dim)])
        outputs = self.inner(both)
        if isinstance(outputs, torch.Tensor):
            return _mean_of_halves(outputs)
        averaged = [_mean_of_halves(o) for o in outputs]
        if self.embeddings:  # the unflipped view's features, as without TTA
            averaged[1] = _first_half(outputs[1])
        return tuple(averaged)


def wrap(module: nn.Module, tta: str) -> nn.Module:
    """`module` with the test-time augmentation `tta` (one of TTA_CHOICES) around it."""
    if tta == "none":
        return module
    if tta == "flip":
        return FlipTTA(module).eval()
    raise ValueError(f"unknown test-time augmentation {tta!r}")


def _halves(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(2, -1, *x.shape[1:])


def _first_half(x: torch.Tensor) -> torch.Tensor:
    return _halves(x)[0]


def _mean_of_halves(x: torch.Tensor) -> torch.Tensor:
    halves = _halves(x)
    return (halves[0] + halves[1]) * 0.5
