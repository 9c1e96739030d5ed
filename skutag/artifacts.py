"""The one model-format table: format x precision -> suffix, converter extra, runtime, batch, card, gates.

Every stage reads this table and no other: `skutag export` (which backend converts,
which precisions and int8 targets a format offers, the parity limits, the extra to
install), `skutag bench` and `skutag run` (which format a file is by its suffix, which
runtime runs it, the batch sizes it takes), the card (`skutag.card`: the precisions and
int8 targets a card may name), `skutag.runtime` (how ONNX Runtime runs each target's
files: TensorRT flags and refusals) and `benchmarks/edge_suite.py`. It imports neither
torch nor any converter, so batchrun (which may import only `skutag`) and `--help` read it.

Two axes:
- `FORMATS`: one row per file format (ONNX, ExecuTorch, LiteRT, OpenVINO IR, Core ML):
  suffixes, the pip extra that installs its converter and runtime (and the modules the
  extra provides, checked by `require_extra`), who runs its files, the batch sizes a
  file takes, where the card lives, which precisions and int8 targets it offers. Its
  backend (`export`, `load`, `versions`) is `skutag.exporter.formats.<name>`.
- `TARGETS`: one row per precision (and int8 hardware target): the parity limits an
  export must meet against PyTorch, the card's `precision` and `int8_target`, and how
  ONNX Runtime runs such a file. A format's (format, precision) cell is the format row
  and the target `resolve(precision, int8_target)`.

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

import sys
from dataclasses import dataclass
from pathlib import Path

from skutag.errors import InputError
from skutag.extras import require

PRECISIONS = ("fp32", "fp16", "int8")
# Which int8: `cpu` is U8S8 asymmetric QDQ (uint8 activations), `tensorrt` S8S8 symmetric QDQ.
INT8_TARGETS = ("cpu", "tensorrt")
# ONNX Runtime's calibrators (how activation ranges are chosen for ONNX int8).
CALIB_METHODS = ("minmax", "entropy", "percentile")


# -- precisions ---------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What an exported model must meet against PyTorch on the same uint8 check images."""

    max_tv: float  # strict upper bound on the largest per-image total variation distance
    p99_tv: float  # strict upper bound on its 99th percentile over the check images
    min_top1_agreement: float  # fraction of images whose top-1 class matches
    min_top5_overlap: float  # mean |topk_ort & topk_torch| / k, k = min(5, classes)
    max_embedding_error: float  # strict upper bound on max ||e_ort - e_torch|| / ||e_torch|| per image


@dataclass(frozen=True)
class Target:
    """One precision (int8: one hardware target): its gates, its card fields, how ORT runs its files."""

    name: str  # fp32 | fp16 | int8-cpu | int8-tensorrt
    precision: str  # the card's precision
    limits: Limits
    int8_target: str | None = None  # the card's int8_target
    note: str = ""
    trt_fp16: bool = False  # TensorRT may build fp16 kernels
    trt_int8: bool = False  # TensorRT reads the file's explicit QDQ int8
    tensorrt_refusal: str | None = None  # why TensorRT cannot run such a file (None: it can)

    @property
    def calibrated(self) -> bool:
        """int8 is calibrated on real images (--calib); fp32 and fp16 need none."""
        return self.precision == "int8"


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
        trt_fp16=True,
    ),
    "int8-cpu": Target(
        "int8-cpu",
        "int8",
        INT8_LIMITS,
        int8_target="cpu",
        note="x86/ARM CPUs: U8S8 QDQ, per-channel weights; head after the pooled features in float",
        tensorrt_refusal="is an int8 model for CPUs (U8S8 QDQ: uint8 activations), which TensorRT cannot "
        "build; export it with `skutag export RUN --precision int8 --int8-target tensorrt`, "
        "or run this one with --device cpu",
    ),
    # The float head (everything after the pooled features) stays fp32 in TensorRT too.
    "int8-tensorrt": Target(
        "int8-tensorrt",
        "int8",
        INT8_LIMITS,
        int8_target="tensorrt",
        note="TensorRT (trt_int8_enable): symmetric S8S8 QDQ; head after the pooled features in float",
        trt_int8=True,
    ),
}


def target_name(precision: str, int8_target: str | None = "cpu") -> str:
    """The row name of a precision (int8 without a target counts as `cpu`)."""
    return f"int8-{int8_target or 'cpu'}" if precision == "int8" else precision


def resolve(precision: str, int8_target: str | None = "cpu") -> Target:
    """The table row for `--precision` (and `--int8-target` when precision is int8)."""
    name = target_name(precision, int8_target)
    if name not in TARGETS:
        raise InputError(f"unknown export target {name!r}; expected one of {sorted(TARGETS)}")
    return TARGETS[name]


# -- formats ------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    """One file format: how its files are named, converted, run, and where their card lives."""

    name: str
    title: str  # what users call it
    suffixes: tuple[str, ...]  # the first is what `skutag export` writes; the others are also this format
    extra: str | None  # pip extra that installs the converter and runtime (None: skutag's own dependencies)
    precisions: tuple[str, ...]
    platform: str  # who runs these files
    batch: int | None  # the one batch size a file takes (None: any, the batch dimension is dynamic)
    card_inside: str | None  # where in the file the card also lives (always in MODEL.<ext>.json beside it)
    int8_targets: tuple[str, ...] = ("cpu",)
    input_kinds: tuple[str, ...] = ("uint8",)  # uint8 NHWC pixels; `float`: float32 NCHW, normalised
    companions: tuple[str, ...] = ()  # files beside the model that are part of it (by suffix)
    suffix_required: bool = True  # --out must end in `suffix` (ONNX files may be named anything)
    converter: tuple[str, ...] = ()  # modules the export needs (from `extra`)
    int8_converter: tuple[str, ...] = ()  # ... and int8 on top
    runtime: tuple[str, ...] = ()  # modules that load and run the files (from `extra`)
    cpu_precisions: tuple[str, ...] | None = None  # worth measuring on a CPU (None: all of `precisions`)
    apple_only: bool = False  # the runtime runs on Apple platforms only
    note: str = ""

    @property
    def suffix(self) -> str:
        return self.suffixes[0]

    @property
    def backend_module(self) -> str:
        """The module with this format's `export`, `load` and `versions`."""
        return f"skutag.exporter.formats.{self.name}"

    @property
    def for_cpu(self) -> tuple[str, ...]:
        return self.cpu_precisions if self.cpu_precisions is not None else self.precisions

    def runs_here(self) -> bool:
        return sys.platform == "darwin" if self.apple_only else True

    def export_modules(self, precision: str) -> tuple[str, ...]:
        """What `skutag export --format NAME --precision P` imports (the check runs the runtime too)."""
        return self.converter + (self.int8_converter if precision == "int8" else ()) + self.runtime


_PT2E = "torchao"  # PyTorch 2 export quantisation (exporter.formats.pt2e), for ExecuTorch and LiteRT int8

FORMATS: dict[str, Format] = {
    "onnx": Format(
        "onnx",
        "ONNX",
        (".onnx", ".ort"),  # .ort: ONNX Runtime's own format of an ONNX model (--ort-format)
        None,
        PRECISIONS,
        "ONNX Runtime anywhere",
        batch=None,
        card_inside="metadata_props['skutag.card']",
        int8_targets=INT8_TARGETS,
        input_kinds=("uint8", "float"),
        suffix_required=False,
        cpu_precisions=("fp32", "int8"),  # fp16 is for GPUs: ORT computes it in fp32 on CPUs
    ),
    "executorch": Format(
        "executorch",
        "ExecuTorch",
        (".pte",),
        "executorch",
        ("fp32", "int8"),
        "PyTorch-native apps (XNNPACK)",
        batch=1,
        card_inside=None,
        converter=("executorch.exir", "executorch.backends.xnnpack.partition.xnnpack_partitioner"),
        int8_converter=("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", _PT2E),
        runtime=("executorch.runtime",),
    ),
    "litert": Format(
        "litert",
        "LiteRT",
        (".tflite",),
        "litert",
        ("fp32", "int8"),
        "Android (LiteRT / TFLite)",
        batch=1,
        card_inside=None,
        converter=("litert_torch",),
        int8_converter=("litert_torch.quantize.pt2e_quantizer", "litert_torch.quantize.quant_config", _PT2E),
        runtime=("ai_edge_litert.interpreter",),
    ),
    "openvino": Format(
        "openvino",
        "OpenVINO IR",
        (".xml",),
        "openvino",
        PRECISIONS,
        "Intel CPUs, GPUs, NPUs",
        batch=None,
        card_inside="rt_info skutag/card",
        companions=(".bin",),  # the weights
        converter=("openvino",),
        int8_converter=("nncf",),
        runtime=("openvino",),
    ),
    "coreml": Format(
        "coreml",
        "Core ML",
        (".mlpackage",),
        "coreml",
        ("fp32", "fp16"),  # int8 calibrates by running the model: Apple platforms only
        "Apple platforms (iOS, macOS)",
        batch=1,
        card_inside="user-defined metadata 'skutag.card'",
        converter=("coremltools",),
        runtime=("coremltools",),
        apple_only=True,
    ),
}
FORMAT_NAMES = tuple(FORMATS)


def get(name: str) -> Format:
    if name not in FORMATS:
        raise InputError(f"unknown export format {name!r}; expected one of {', '.join(FORMATS)}")
    return FORMATS[name]


def format_of(path: str | Path) -> str | None:
    """The format `path` names by its suffix, else None."""
    suffix = Path(path).suffix.lower()
    return next((f.name for f in FORMATS.values() if suffix in f.suffixes), None)


def title(name: str) -> str:
    return FORMATS[name].title


def a_title(name: str) -> str:
    """The title with its article: "an ExecuTorch", "a LiteRT"."""
    text = title(name)
    return ("an " if text[0] in "AEIOU" else "a ") + text


def for_path(path: str | Path) -> Format:
    """The row for a model file, by its suffix; InputError for a file of no known format."""
    name = format_of(path)
    if name is None:
        known = ", ".join(f"{f.suffix} ({f.title})" for f in FORMATS.values())
        raise InputError(f"{path}: not a model file skutag knows (expected {known})")
    return FORMATS[name]


def require_extra(fmt: Format, modules: tuple[str, ...], command: str) -> None:
    """Import `modules` (what `command` needs of `fmt`), or raise MissingExtra (exit 2, one line
    naming the extra to install)."""
    for module in modules:
        require(module, fmt.extra, command)
