"""The table of export targets: one row per precision (and int8 hardware target).

Ultralytics-style: this one table drives the conversion (which quantisation
settings), the parity limits the exported file must meet against PyTorch, the card's
`precision` and `int8_target`, the report, and how ONNX Runtime runs the file (each
row's `runtime` is its row of `skutag.runtime.RUNTIME_TARGETS`: TensorRT precision
flags, and which devices refuse it; it lives there because batchrun may import only
`skutag`). Nothing else in the exporter branches on names.

Parity is judged per image, so a gate means the same at 2 classes and at 1,000: the
total variation distance TV = 1/2 sum_c |p_ort - p_torch| in [0, 1] (half the sum of
|dprob| over the classes of one image; a mean over images x classes is bounded by 2/K
and cannot fire with many classes), gated at its p99 and its max over the check
images, plus top-1 agreement, top-k overlap and, for models with an `embedding`
output, the worst per-image relative L2 error of the embedding. Check images are
disjoint from the calibration images by default (exporter.samples.plan).

Limits, measured (benchmarks/RESULTS.md, "int8 with a float head (issue 12)": ResNet-50 at
224 px with a random backbone and AdaBN statistics, head trained with the repo's recipe;
the real photos of ../shared/data (catalog-photos 6 classes, clothing 10 classes, 180
check images each) and the demo's synthetic catalog (6 classes, 200 check images), check
images disjoint from the calibration images):
- fp32: the same float graph; differences are summation order only (catalog photos: per-image
  TV max 1.7e-5, embedding error 1.9e-5). Limits: TV max and p99 < 1e-4, top-1 and top-k 100%,
  embedding error < 1e-4.
- fp16: TV max 0.015-0.017, p99 0.012-0.015; top-5 overlap 99.6-99.8%; top-1 agreement
  97.8-99.4% (the 10-class clothing model is weak: each flip is a near tie moved by TV
  <= 0.015); embedding error <= 0.021. Limits: TV max < 0.1, p99 < 0.05, top-1 >= 95%
  (was 98%, which failed the clothing fp16 export), top-k >= 95%, embedding < 0.05.
- int8 (cpu U8S8 and tensorrt S8S8, the head and everything after the pooled features in
  float): the demo model (validation accuracy 0.98) TV max 0.63-0.64 and p99 0.33-0.41
  over 200 images (a few near-tie images move a lot: the max is an extreme-value figure,
  hence its loose bound), top-1 96.5-98.5%, top-5 96.3-97.8%, embedding error max
  0.19-0.23. On the real photos the same recipe gives weak models (accuracy 0.36-0.59,
  median top probability 0.4) whose int8 changes 25-46% of decisions (TV p99 0.27-0.50):
  the gate refuses them, as it must. Limits: TV p99 < 0.5, max < 0.9 (no confident image
  moved completely: moved or scrambled models score 0.99), top-1 >= 95%, top-k >= 90%,
  embedding error < 0.35 (1.5x the worst measured).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from skutag.card import INT8_TARGETS
from skutag.errors import InputError
from skutag.runtime import RUNTIME_TARGETS, RuntimeTarget

CALIB_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Limits:
    """What an exported model must meet against PyTorch on the same uint8 check images."""

    max_tv: float  # strict upper bound on the largest per-image total variation distance
    p99_tv: float  # strict upper bound on its 99th percentile over the check images
    min_top1_agreement: float  # fraction of images whose top-1 class matches
    min_top5_overlap: float  # mean |topk_ort & topk_torch| / k, k = min(5, classes)
    max_embedding_error: float  # strict upper bound on max ||e_ort - e_torch|| / ||e_torch|| per image


@dataclass(frozen=True)
class Quantisation:
    """ORT static quantisation settings, by name (onnxruntime is imported only when converting)."""

    activation_type: str  # a `QuantType` member name
    weight_type: str
    per_channel: bool
    extra_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    name: str
    precision: str  # the card's precision
    limits: Limits
    quantisation: Quantisation | None = None
    int8_target: str | None = None  # the card's int8_target
    note: str = ""

    @property
    def runtime(self) -> RuntimeTarget:
        """How ONNX Runtime runs this target's files (TensorRT flags, device refusals)."""
        return RUNTIME_TARGETS[self.name]


INT8_LIMITS = Limits(
    max_tv=0.9, p99_tv=0.5, min_top1_agreement=0.95, min_top5_overlap=0.90, max_embedding_error=0.35
)

TARGETS: dict[str, Target] = {
    "fp32": Target(
        "fp32",
        "fp32",
        Limits(
            max_tv=1e-4, p99_tv=1e-4, min_top1_agreement=1.0, min_top5_overlap=1.0, max_embedding_error=1e-4
        ),
        note="reference precision; any device",
    ),
    "fp16": Target(
        "fp16",
        "fp16",
        Limits(
            max_tv=0.1, p99_tv=0.05, min_top1_agreement=0.95, min_top5_overlap=0.95, max_embedding_error=0.05
        ),
        note="for GPUs (CUDA, TensorRT); not faster on CPUs, where ORT computes fp16 in fp32",
    ),
    "int8-cpu": Target(
        "int8-cpu",
        "int8",
        INT8_LIMITS,
        # U8S8 QDQ: uint8 activations, int8 per-channel weights; every conv fuses into QLinearConv.
        Quantisation("QUInt8", "QInt8", per_channel=True),
        int8_target="cpu",
        note="x86/ARM CPUs: U8S8 QDQ, per-channel weights; head after the pooled features in float",
    ),
    "int8-tensorrt": Target(
        "int8-tensorrt",
        "int8",
        INT8_LIMITS,
        # TensorRT reads explicit QDQ and wants symmetric int8 for activations and weights.
        Quantisation(
            "QInt8",
            "QInt8",
            per_channel=True,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        ),
        int8_target="tensorrt",
        note="TensorRT (trt_int8_enable): symmetric S8S8 QDQ; head after the pooled features in float",
    ),
}


def resolve(precision: str, int8_target: str = "cpu") -> Target:
    """The table row for `--precision` (and `--int8-target` when precision is int8)."""
    name = f"int8-{int8_target}" if precision == "int8" else precision
    if name not in TARGETS:
        raise InputError(f"unknown export target {name!r}; expected one of {sorted(TARGETS)}")
    return TARGETS[name]


__all__ = ["CALIB_METHODS", "INT8_TARGETS", "TARGETS", "Limits", "Quantisation", "Target", "resolve"]
