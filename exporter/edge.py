"""`skutag export --format executorch|litert|openvino|coreml`: the edge formats, each checked by running it.

The same steps and gates as the ONNX export (exporter.pipeline): the one PyTorch
wrapper (`exporter.graph.ExportModule`: uint8 NHWC pixels in, preprocessing and
softmax inside, `probs` and optionally `embedding` out), calibration and check images
chosen by `exporter.samples.plan` (disjoint for int8), conversion by the format's
module (exporter.formats), then the file is loaded in its own runtime and compared
per image with PyTorch under the limits of `exporter.targets`. Only a file that passed
is moved onto `--out`; a failed step leaves nothing there. The report
`MODEL.<ext>.json` (card, parity figures, calibration, sha256 of every file) is
written after the model. A format whose runtime does not run here (Core ML off Apple
platforms) is exported with its parity recorded as unverified, and the CLI says so.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from skutag.exporter import formats, graph
from skutag.exporter.parity import ParityError, compare, torch_outputs
from skutag.exporter.samples import SampleSet

from skutag.errors import InputError
from skutag.fsio import atomic_write_json


def validate(request) -> formats.Format:
    """Refuse what this format cannot do before any heavy work."""
    fmt = formats.get(request.format)
    if request.precision not in fmt.precisions:
        raise InputError(
            f"--format {fmt.name} offers --precision {', '.join(fmt.precisions)}, not {request.precision}"
            + (
                " (Core ML calibrates int8 activations by running the model: Apple platforms only)"
                if fmt.name == "coreml" and request.precision == "int8"
                else ""
            )
        )
    if request.input_kind != "uint8":
        raise InputError(f"--format {fmt.name} takes uint8 pixels only; --input float is for ONNX")
    if request.ort_format:
        raise InputError("--ort-format is for --format onnx")
    if request.precision == "int8" and request.int8_target != "cpu":
        raise InputError(
            f"--int8-target {request.int8_target} is for ONNX; {fmt.title} int8 targets its CPU delegate"
        )
    if request.out.suffix.lower() != fmt.suffix:
        raise InputError(
            f"--format {fmt.name} writes {fmt.suffix} files; --out {request.out} does not end in it"
        )
    fmt.backend()  # a missing converter is one line naming the extra, before loading anything
    return fmt


def run_edge_export(request, samples_for) -> Any:
    """Export, check and write an edge model; returns `exporter.pipeline.ExportResult`."""
    from skutag.exporter.pipeline import ExportResult
    from skutag.exporter.pipeline import validate as validate_common
    from skutag.trainer.weights import load_trained

    fmt = validate(request)
    validate_common(request)
    started = time.perf_counter()
    target = request.target
    model, run_card = load_trained(request.source)
    embeddings = request.embeddings or run_card.review is not None
    module = graph.ExportModule(model, run_card, input_kind="uint8", embeddings=embeddings).eval()
    card = graph.exported_card(run_card, "uint8", target.precision, target.int8_target)
    calibration, check_set = samples_for(request, target, run_card)
    backend = fmt.backend()
    parity = None
    unverified = None
    with tempfile.TemporaryDirectory(prefix=".skutag-export-", dir=request.out.parent) as work:
        staged = Path(work) / request.out.name
        notes = backend.export(module, card, staged, target.precision, calibration)
        if check_set is not None:
            if fmt.runs_here():
                parity = _check(fmt, backend, staged, module, check_set, run_card, target)
            else:
                unverified = f"{fmt.title} runs only on {fmt.platform}: this export was not run here"
        files = formats.file_hashes(staged)
        _move_into_place(staged, request.out)
    summary = _summary(request, fmt, target, card, files, parity, unverified, calibration, check_set, notes)
    summary["export_seconds"] = round(time.perf_counter() - started, 2)
    summary["versions"] = _versions(backend)
    report = formats.report_path(request.out)
    atomic_write_json(report, summary)
    return ExportResult(request.out, report, None, card, parity, summary)


def _check(fmt, backend, staged: Path, module, check_set: SampleSet, run_card, target):
    runner = backend.load(staged)
    probs, embedding = formats.run_all(runner, check_set.pixels)
    reference = torch_outputs(module, check_set, run_card, "uint8")
    parity = compare(reference.probs, probs, reference.embedding, embedding)
    problems = parity.failures(target.limits)
    if problems:
        raise ParityError(
            f"{fmt.title} {target.name} export failed its parity check against PyTorch on {parity.images} "
            "check images: " + "; ".join(problems) + " (nothing written; --no-check skips the check)"
        )
    return parity


def _move_into_place(staged: Path, out: Path) -> None:
    """Rename every file of the checked model onto --out (OpenVINO: the .bin before the .xml)."""
    if staged.is_dir():  # .mlpackage
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)
        return
    for path in reversed(formats.model_files(staged)):
        os.replace(path, out.with_name(out.stem + path.suffix) if path != staged else out)


def _summary(request, fmt, target, card, files, parity, unverified, calibration, check_set, notes) -> dict:
    from skutag.exporter.pipeline import _shared

    return {
        "model": str(request.out),
        "format": fmt.name,
        "sha256": files.get(request.out.name),  # None for a .mlpackage directory: see "files"
        "files": files,
        "file_bytes": formats.size_bytes(request.out),
        "precision": target.precision,
        "target": target.name,
        "runtime": fmt.platform,
        "notes": notes,
        "card_inside": fmt.card_inside,
        "source": {"weights": str(request.source)},
        "parity": None
        if parity is None
        else {
            **parity.to_dict(),
            "sample": check_set.describe(),
            "shared_with_calibration": _shared(check_set, calibration),
            "limits": target.limits.__dict__,
            "reference": "PyTorch fp32 on the CPU",
            "runtime": f"{fmt.title} runtime on this machine's CPU",
        },
        "parity_unverified": unverified,
        "calibration": None
        if calibration is None
        else {**calibration.describe(), "note": "one image per calibration step"},
        "card": card.to_dict(),
    }


def _versions(backend) -> dict[str, str]:
    import torch

    from skutag import __version__

    return {"skutag": __version__, "torch": torch.__version__, **backend.versions()}
