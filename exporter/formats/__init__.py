"""The format backends: one module per row of the model-format table (`skutag.artifacts.FORMATS`).

`skutag.exporter.pipeline` runs every format through the same steps and calls the row's
module, `skutag.exporter.formats.<name>`, for what differs. Each module exposes:

- `export(job, out) -> dict`: write the file at `out` from `job.module`, the PyTorch
  `exporter.graph.ExportModule` (uint8 NHWC pixels in, or float NCHW for ONNX's
  `--input float`; preprocessing and softmax inside, `probs` and optionally `embedding`
  out), at `job.target`'s precision; int8 is calibrated on `job.calibration` (a
  `SampleSet`), one image at a time. Returns the notes the report records.
- `report_fields(job, out, notes) -> dict`: the format's own keys of the report
  (`MODEL.<ext>.json`) beside the common ones (ONNX: opset, signature, ORT's quantiser).
- `load(path) -> Runner`: the file in its own runtime on the CPU (InputError when it
  cannot be loaded).
- `versions() -> dict`: converter and runtime versions for the report.

The modules import their converter and runtime inside these functions; whether the
format's extra is installed is checked once, from the table, by
`skutag.artifacts.require_extra` (the export's validation, `load_runner`).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from skutag.artifacts import FORMATS, Format, Target, for_path, format_of, require_extra
from skutag.card import ModelCard
from skutag.errors import InputError, SkutagError


class MissingRuntime(SkutagError):
    """The format's runtime does not run on this platform (Core ML off Apple platforms)."""


class Runner(Protocol):
    """An exported file loaded in its runtime: [N, ...] model input -> (probs, embedding or None)."""

    batch_size: int | None  # the one batch size the file takes, or None (any)

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...

    def outputs(self, pixels: np.ndarray) -> list[np.ndarray]:
        """Every output, in the graph's order (exporter.graph.output_names): `probs`, `embedding` when the
        file has it, `attr.<name>` per attribute head."""
        ...


@dataclass(frozen=True)
class Job:
    """What a backend converts: the PyTorch wrapper, its cards, the precision row and the calibration."""

    module: Any  # exporter.graph.ExportModule
    run_card: ModelCard  # the trained model's card
    card: ModelCard  # the exported file's card (precision, int8 target, input kind set)
    target: Target  # the precision row of skutag.artifacts.TARGETS
    calibration: Any  # exporter.samples.SampleSet (int8) or None
    input_kind: str = "uint8"
    calib_method: str = "minmax"
    ort_format: bool = False  # ONNX: also write MODEL.ort beside the file
    work: Path | None = None  # scratch directory for intermediate files


def backend(fmt: Format) -> ModuleType:
    """The module that exports, loads and versions `fmt`'s files."""
    return importlib.import_module(fmt.backend_module)


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
    if model.is_dir():  # .mlpackage
        return sorted(p for p in model.rglob("*") if p.is_file())
    name = format_of(model)
    return [model] + [model.with_suffix(s) for s in (FORMATS[name].companions if name else ())]


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


def load_runner(model: str | Path, command: str = "skutag bench") -> tuple[Format, ModelCard, Runner]:
    """An exported edge model, verified against its report and loaded in its runtime on the CPU."""
    fmt, card, _ = verified_card(model)
    if not fmt.runs_here():
        raise MissingRuntime(f"{model}: {fmt.title} models run only on {fmt.platform}; not on this machine")
    require_extra(fmt, fmt.runtime, f"{command} {Path(model).name}")
    return fmt, card, backend(fmt).load(Path(model))


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


def run_outputs(runner: Runner, pixels: np.ndarray, batch: int = 16) -> list[np.ndarray]:
    """Every output of `runner` (`Runner.outputs`) on every image, in chunks of the batch size the file takes."""
    step = runner.batch_size or batch
    chunks = [runner.outputs(np.ascontiguousarray(pixels[s : s + step])) for s in range(0, len(pixels), step)]
    return [np.concatenate([chunk[i] for chunk in chunks]) for i in range(len(chunks[0]))]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
