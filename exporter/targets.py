"""The table of export targets: one row per precision (and int8 hardware target).

Ultralytics-style: this one table drives the conversion (which quantisation
settings), the parity thresholds the exported file must meet against PyTorch, the
card's `precision` and the report. Nothing else in the exporter branches on names.

Parity thresholds, measured on 120 synthetic-catalog images (ORT 1.31 CPU vs torch 2.15
CPU) with a ResNet-18 at 64 px (trained to 100% train accuracy, median top prob 0.81) and
a ResNet-50 at 96 px (briefly trained, median top prob 0.63):
- fp32: the same float graph; differences are summation order only (measured < 1e-8).
  All top-1 agree and max |dprob| < 1e-4 (the issue's contract).
- fp16: measured max |dprob| 4e-4 (ResNet-18) and 1e-3 (ResNet-50 at 96 px), top-1 and
  top-5 100%; at full size (ResNet-50, 224 px, 160 val images, median top prob 0.92):
  max 0.0205 on one near-tie image (p99 0.018, mean 0.001), top-1 100%, top-5 99.1%.
  Limits: max |dprob| < 5e-2 (2.4x the worst measured), top-1 >= 98%, top-5 >= 95%.
- int8 (cpu, U8S8): measured max |dprob| 0.014 (minmax) to 0.095 (entropy), mean
  0.002-0.011, top-1 99.2-100%, top-5 100%; tensorrt (S8S8 symmetric): 0.018-0.032,
  100%; at full size (ResNet-50, 224 px, a random backbone with AdaBN statistics, 160
  images): top-1 98.4-98.75%, top-5 93.8-97.1%, mean 0.013, max 0.21-0.33 (p90 0.13) on
  single near-tie images. Limits: top-1 >= 95%, top-5 >= 90% (agreement is the real gate),
  mean |dprob| < 0.04 (3x the worst measured: a broken graph moves most images, and a mean
  sees that); the max over images is not gated for int8 (it grows with the sample: the
  same model measured 0.33 on 64 images and 0.65 on 200, with agreement passing, and
  the earlier max bound of 0.3 failed good models on one near-tie image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from skutag.errors import InputError

INT8_TARGETS = ("cpu", "tensorrt")
CALIB_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Limits:
    """What an exported model must meet against PyTorch on the same uint8 images."""

    max_abs_dprob: float  # strict upper bound on max |prob_ort - prob_torch|
    min_top1_agreement: float  # fraction of images whose top-1 class matches
    min_top5_overlap: float  # mean |top5_ort & top5_torch| / 5
    max_mean_abs_dprob: float = 1.0  # strict upper bound on the mean over images and classes (1.0: none)


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
    note: str = ""


# No bound on the max over images for int8: it is an extreme-value statistic that grows with the
# number of check images (0.33 on 64 images, 0.65 on 200, same model), and a near-tie that flips
# is already counted by the top-1 agreement gate. 1.0 + eps: |dprob| never reaches it.
INT8_LIMITS = Limits(
    max_abs_dprob=1.0 + 1e-6, min_top1_agreement=0.95, min_top5_overlap=0.90, max_mean_abs_dprob=0.04
)

TARGETS: dict[str, Target] = {
    "fp32": Target(
        "fp32",
        "fp32",
        Limits(max_abs_dprob=1e-4, min_top1_agreement=1.0, min_top5_overlap=1.0),
        note="reference precision; any device",
    ),
    "fp16": Target(
        "fp16",
        "fp16",
        Limits(max_abs_dprob=5e-2, min_top1_agreement=0.98, min_top5_overlap=0.95),
        note="for GPUs (CUDA, TensorRT); not faster on CPUs, where ORT computes fp16 in fp32",
    ),
    "int8-cpu": Target(
        "int8-cpu",
        "int8",
        INT8_LIMITS,
        # U8S8 QDQ: uint8 activations, int8 per-channel weights; every conv fuses into QLinearConv.
        Quantisation("QUInt8", "QInt8", per_channel=True),
        note="x86/ARM CPUs: U8S8 QDQ, per-channel weights",
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
        note="TensorRT (trt_int8_enable): symmetric S8S8 QDQ",
    ),
}


def resolve(precision: str, int8_target: str = "cpu") -> Target:
    """The table row for `--precision` (and `--int8-target` when precision is int8)."""
    name = f"int8-{int8_target}" if precision == "int8" else precision
    if name not in TARGETS:
        raise InputError(f"unknown export target {name!r}; expected one of {sorted(TARGETS)}")
    return TARGETS[name]
