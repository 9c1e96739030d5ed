"""The table of export formats: one row per format drives export, the check, and `skutag bench`.

Each row names its converter module (imported only when used), the optional extra
that installs it, the precisions it offers, whether its runtime runs here, and where
the model card travels. Every module exposes the same three functions:

- `export(module, card, out, precision, calibration) -> dict`: write the file at `out`
  from the PyTorch `exporter.graph.ExportModule` (uint8 NHWC pixels in, preprocessing
  and softmax inside, `probs` and optionally `embedding` out); int8 is calibrated on
  `calibration` (a `SampleSet`), one image at a time. Returns what the report records.
- `load(path) -> Runner`: the file in its own runtime on the CPU (InputError when it
  cannot be loaded), or MissingRuntime where the runtime does not run on this platform.
- `versions() -> dict`: converter and runtime versions for the report.

The ONNX row is here so that bench and `skutag run`'s refusal read one table; its export
is `exporter.pipeline` (ONNX Runtime's quantiser, the .ort file, TensorRT targets).
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from skutag.artifacts import SUFFIXES, format_of
from skutag.card import ModelCard
from skutag.errors import InputError, SkutagError

FORMAT_NAMES = tuple(SUFFIXES)


class MissingExtra(InputError):
    """The format's converter or runtime is not installed (exit 2): one line naming the extra."""


class MissingRuntime(SkutagError):
    """The format's runtime does not run on this platform (Core ML off Apple platforms)."""


class Runner(Protocol):
    """An exported file loaded in its runtime: uint8 [N, H, W, 3] pixels -> (probs, embedding or None)."""

    batch_size: int | None  # the one batch size the file takes, or None (any)

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...


@dataclass(frozen=True)
class Format:
    name: str
    module: str  # exporter.formats.<module>
    extra: str | None  # pip extra that installs the converter and runtime
    precisions: tuple[str, ...]
    platform: str  # who runs these files
    card_inside: bool  # the card is also in the file's own metadata (always in MODEL.<ext>.json)
    runs_here: Callable[[], bool] = lambda: True

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.name][0]

    @property
    def title(self) -> str:
        return SUFFIXES[self.name][1]

    def backend(self) -> ModuleType:
        return importlib.import_module(f"skutag.exporter.formats.{self.module}")


def _apple() -> bool:
    return sys.platform == "darwin"


FORMATS: dict[str, Format] = {
    "onnx": Format("onnx", "onnx", None, ("fp32", "fp16", "int8"), "ONNX Runtime anywhere", True),
    "executorch": Format(
        "executorch", "executorch", "executorch", ("fp32", "int8"), "PyTorch-native apps (XNNPACK)", False
    ),
    "litert": Format("litert", "litert", "litert", ("fp32", "int8"), "Android (LiteRT / TFLite)", False),
    "openvino": Format(
        "openvino", "openvino", "openvino", ("fp32", "fp16", "int8"), "Intel CPUs, GPUs, NPUs", True
    ),
    "coreml": Format(
        "coreml", "coreml", "coreml", ("fp32", "fp16"), "Apple platforms (iOS, macOS)", True, _apple
    ),
}


def get(name: str) -> Format:
    if name not in FORMATS:
        raise InputError(f"unknown export format {name!r}; expected one of {', '.join(FORMATS)}")
    return FORMATS[name]


def for_path(path: str | Path) -> Format:
    """The row for a model file, by its suffix; InputError for a file of no known format."""
    name = format_of(path)
    if name is None:
        known = ", ".join(f"{f.suffix} ({f.title})" for f in FORMATS.values())
        raise InputError(f"{path}: not a model file skutag knows (expected {known})")
    return FORMATS[name]


def require(module: str, extra: str, title: str) -> ModuleType:
    """Import a converter or runtime module, or raise MissingExtra naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"{title} needs the optional extra: pip install 'skutag[{extra}]' ({module} is not importable: "
            f"{str(exc).splitlines()[0]})"
        ) from exc


def report_path(model: str | Path) -> Path:
    """MODEL.<ext>.json beside the model: the export report, with the card and the parity figures."""
    model = Path(model)
    return model.with_name(model.name + ".json")


def read_report(model: str | Path) -> dict[str, Any]:
    """The report beside an edge model file; InputError when it is missing or unreadable."""
    path = report_path(model)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(
            f"{model} has no skutag report beside it ({path.name}: the card travels there)"
        ) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc


def model_files(model: str | Path) -> list[Path]:
    """Every file an exported model consists of (OpenVINO IR: the .xml and its .bin)."""
    model = Path(model)
    if model.suffix == ".xml":
        return [model, model.with_suffix(".bin")]
    if model.is_dir():
        return sorted(p for p in model.rglob("*") if p.is_file())
    return [model]


def size_bytes(model: str | Path) -> int:
    return sum(p.stat().st_size for p in model_files(model) if p.exists())


def verified_card(model: str | Path) -> tuple[Format, ModelCard, dict[str, Any]]:
    """Format, card and report of an edge model, after checking its files against the report's sha256.

    A truncated, corrupted or replaced file is refused here in one line, before any
    native runtime parses it (some abort the process on a malformed file).
    """
    from skutag.fsio import sha256_file

    fmt = for_path(model)
    model = Path(model)
    if not model.exists():
        raise InputError(f"model file not found: {model}")
    report = read_report(model)
    recorded = report.get("files") or {}
    for path in model_files(model):
        if not path.exists():
            raise InputError(f"{model}: {path.name} is missing ({fmt.title} needs it)")
        key = str(path.relative_to(model)) if model.is_dir() else path.name
        expected = recorded.get(key)
        if expected is None or sha256_file(path) != expected:
            raise InputError(
                f"{model}: {key} does not match the sha256 its export recorded in {report_path(model).name} "
                "(truncated, corrupted or replaced after export); export it again"
            )
    try:
        card = ModelCard.from_dict(report["card"])
    except Exception as exc:
        raise InputError(f"{report_path(model)}: no valid skutag card ({exc})") from exc
    return fmt, card, report


def file_hashes(model: str | Path) -> dict[str, str]:
    """sha256 of every file of an exported model, keyed as `verified_card` looks them up."""
    from skutag.fsio import sha256_file

    model = Path(model)
    return {
        (str(p.relative_to(model)) if model.is_dir() else p.name): sha256_file(p) for p in model_files(model)
    }


def load_runner(model: str | Path) -> tuple[Format, ModelCard, Runner]:
    """An exported edge model, verified against its report and loaded in its runtime on the CPU."""
    fmt, card, _ = verified_card(model)
    if not fmt.runs_here():
        raise MissingRuntime(f"{model}: {fmt.title} models run only on {fmt.platform}; not on this machine")
    return fmt, card, fmt.backend().load(Path(model))


def run_all(runner: Runner, pixels: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray | None]:
    """Outputs of `runner` on every image, in chunks of the batch size the file takes."""
    step = runner.batch_size or batch
    probs, embeddings = [], []
    for start in range(0, len(pixels), step):
        p, e = runner(np.ascontiguousarray(pixels[start : start + step]))
        probs.append(p)
        if e is not None:
            embeddings.append(e)
    return np.concatenate(probs), (np.concatenate(embeddings) if embeddings else None)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
