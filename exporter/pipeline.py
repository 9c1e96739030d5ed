"""`skutag export` end to end, for every format: trained weights -> one checked model file and its report.

Steps, the same for each row of the format table (`skutag.artifacts.FORMATS`): validate
the request against the table (precision, int8 target, input kind, suffix, the
format's extra installed) before any heavy work; load the trained model and card
(trainer.weights) and wrap it (`exporter.graph.ExportModule`: pixels in, preprocessing
and softmax inside, `probs` and optionally `embedding` out); choose calibration and
check images (disjoint by default, exporter.samples.plan); convert with the format's
backend (`exporter.formats.<name>.export`) into a staging folder beside `--out`; load
the result in its own runtime (`<name>.load`) and compare it per image with PyTorch
under the limits of its precision row (`skutag.artifacts.TARGETS`); only then rename
its files onto `--out`. With `--tta flip` the wrapper of exporter.tta goes around the
module first (the card records it), so every format and the parity reference hold it. A failed step leaves nothing at `--out`. The report
`MODEL.<ext>.json` (card, parity figures, calibration, sha256 of every file) is written
after the model. A format whose runtime does not run here (Core ML off Apple platforms)
is exported with its parity recorded as unverified, and the CLI says so.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from skutag.exporter import formats, graph, samples, tta
from skutag.exporter.parity import Parity, check, torch_outputs

from skutag import artifacts
from skutag.artifacts import Format, Target, resolve
from skutag.card import ModelCard
from skutag.errors import InputError
from skutag.fsio import atomic_write_json, sha256_file


@dataclass(frozen=True)
class ExportRequest:
    source: Path  # run dir or .safetensors
    out: Path
    precision: str = "fp32"
    int8_target: str = "cpu"
    input_kind: str = "uint8"
    embeddings: bool = False
    calib_dir: Path | None = None
    calib_method: str = "minmax"
    calib_size: int = 256
    check: bool = True
    check_dir: Path | None = None
    check_size: int = 64
    ort_format: bool = False
    format: str = "onnx"  # a row of skutag.artifacts.FORMATS
    tta: str = "none"  # test-time augmentation inside the graph (exporter.tta.TTA_CHOICES)

    @property
    def target(self) -> Target:
        return resolve(self.precision, self.int8_target)


@dataclass(frozen=True)
class ExportResult:
    model: Path
    report: Path
    ort_model: Path | None
    card: ModelCard
    parity: Parity | None
    summary: dict[str, Any]


def validate(request: ExportRequest) -> Format:
    """Refuse what cannot work before loading anything: a precision or option the format does not offer,
    no calibration data, an unwritable --out, the format's extra not installed."""
    fmt = artifacts.get(request.format)
    if request.precision not in fmt.precisions:
        raise InputError(
            f"--format {fmt.name} offers --precision {', '.join(fmt.precisions)}, not {request.precision}"
            + (
                " (Core ML calibrates int8 activations by running the model: Apple platforms only)"
                if fmt.apple_only and request.precision == "int8"
                else ""
            )
        )
    if request.input_kind not in fmt.input_kinds:
        offered = " / ".join(
            f.title for f in artifacts.FORMATS.values() if request.input_kind in f.input_kinds
        )
        raise InputError(
            f"--format {fmt.name} takes {' or '.join(fmt.input_kinds)} pixels only; "
            f"--input {request.input_kind} is for {offered}"
        )
    if request.ort_format and ".ort" not in fmt.suffixes:
        offered = ", ".join(f"--format {f.name}" for f in artifacts.FORMATS.values() if ".ort" in f.suffixes)
        raise InputError(f"--ort-format is for {offered}")
    if request.precision == "int8" and request.int8_target not in fmt.int8_targets:
        offered = " / ".join(
            f.title for f in artifacts.FORMATS.values() if request.int8_target in f.int8_targets
        )
        raise InputError(
            f"--int8-target {request.int8_target} is for {offered}; {fmt.title} int8 targets its CPU delegate"
        )
    if str(request.out).strip() in ("", "-"):
        raise InputError(
            "--out -: name a model file such as model.onnx (skutag writes files, not to standard output)"
        )
    named = artifacts.format_of(request.out)
    if named is not None and named != fmt.name:  # a file must not lie about its format
        raise InputError(
            f"--out {request.out} names {artifacts.a_title(named)} file but --format {fmt.name} writes "
            f"{fmt.title}; pass --format {named}, or end --out in {fmt.suffix}"
        )
    if request.out.suffix.lower() == ".ort":
        raise InputError(
            f"--out {request.out}: .ort is ONNX Runtime's own format; name the file .onnx and pass --ort-format "
            "for the .ort beside it"
        )
    if fmt.suffix_required and request.out.suffix.lower() != fmt.suffix:
        raise InputError(
            f"--format {fmt.name} writes {fmt.suffix} files; --out {request.out} does not end in it"
        )
    target = request.target
    if target.calibrated and request.calib_dir is None:
        raise InputError(
            "--precision int8 needs calibration images: pass --calib DIR with real images like the ones "
            "you will tag (skutag never calibrates on default data)"
        )
    out = request.out
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file name such as {out / 'model.onnx'}")
    try:  # a real probe: os.access says yes to root on read-only file systems
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise InputError(f"cannot write --out {out}: {exc.strerror or exc}") from exc
    # A missing converter is one line naming the extra (exit 2), before loading anything.
    artifacts.require_extra(fmt, fmt.export_modules(request.precision), f"skutag export --format {fmt.name}")
    if target.precision == "int8" and graph.reads_domain(_run_card(request.source)):
        raise InputError(
            f"--precision int8: the review queue of {request.source} reads the backbone stages' feature "
            "statistics (--ood-score stage-statistics), which 8-bit activations change (benchmarks/RESULTS.md, "
            "review queue); export --precision fp32 or fp16, or train with --ood-score cosine"
        )
    return fmt


def run_export(request: ExportRequest) -> ExportResult:
    """Export, convert, check and write; see the module docstring."""
    from skutag.trainer.weights import load_trained

    fmt = validate(request)
    backend = formats.backend(fmt)
    started = time.perf_counter()
    target = request.target
    model, run_card = load_trained(request.source)
    # A card with a review section needs the `embedding` output: batchrun scores it against the class means.
    embeddings = request.embeddings or run_card.review is not None
    module = graph.ExportModule(model, run_card, input_kind=request.input_kind, embeddings=embeddings).eval()
    # With --tta the PyTorch reference of the parity check is the same wrapped module.
    module = tta.wrap(module, request.tta)
    card = graph.exported_card(run_card, request.input_kind, target.precision, target.int8_target)
    if request.tta != "none":
        card = card.replace(tta=request.tta)
    calibration, check_set = choose_samples(request, target, run_card)

    parity = None
    unverified = None
    with tempfile.TemporaryDirectory(prefix=".skutag-export-", dir=request.out.parent) as tmp:
        stage, work = Path(tmp) / "stage", Path(tmp) / "work"
        stage.mkdir()
        work.mkdir()
        staged = stage / request.out.name
        job = formats.Job(
            module=module,
            run_card=run_card,
            card=card,
            target=target,
            calibration=calibration,
            input_kind=request.input_kind,
            calib_method=request.calib_method,
            ort_format=request.ort_format,
            work=work,
        )
        notes = backend.export(job, staged)
        if check_set is not None:
            if fmt.runs_here():
                reference = torch_outputs(module, check_set, run_card, request.input_kind)
                parity = check(
                    staged,
                    reference,
                    check_set,
                    run_card,
                    request.input_kind,
                    target.limits,
                    f"{fmt.title} {target.name}",
                )
            else:
                unverified = f"{fmt.title} runs only on {fmt.platform}: this export was not run here"
        files = formats.file_hashes(staged)
        _move_into_place(stage, staged, request.out)
    summary = _summary(request, fmt, target, card, files, parity, unverified, calibration, check_set, notes)
    fields = backend.report_fields(job, request.out, notes)
    if "calibration" in fields:
        summary["calibration"] = {**(summary["calibration"] or {}), **fields.pop("calibration")}
    summary.update(fields)
    summary["export_seconds"] = round(time.perf_counter() - started, 2)
    summary["versions"] = _versions(backend)
    report = formats.report_path(request.out)
    atomic_write_json(report, summary)
    ort_model = Path(summary["ort_format"]) if summary.get("ort_format") else None
    return ExportResult(request.out, report, ort_model, card, parity, summary)


def choose_samples(
    request: ExportRequest, target: Target, card: ModelCard
) -> tuple[samples.SampleSet | None, samples.SampleSet | None]:
    """Calibration images (int8 only) and parity-check images (None with --no-check).

    int8: disjoint sets (exporter.samples.plan): --check-images minus the calibration files,
    else the --calib files calibration did not take. Otherwise --check-images, else --calib,
    else synthetic images.
    """
    if target.calibrated:
        assert request.calib_dir is not None  # validate() refused int8 without --calib
        calib_files, check_files = samples.plan(
            request.calib_dir, request.calib_size, request.check_dir, request.check_size
        )
        calibration = samples.load_files(calib_files, card, str(request.calib_dir))
        if not request.check:
            return calibration, None
        source = str(request.check_dir or request.calib_dir)
        return calibration, samples.load_files(check_files, card, source)
    if not request.check:
        return None, None
    real = request.check_dir or request.calib_dir  # nothing is calibrated: any real images will do
    if real is not None:
        return None, samples.load_directory(real, card, request.check_size)
    return None, samples.synthetic(card, request.check_size)


def _move_into_place(stage: Path, staged: Path, out: Path) -> None:
    """Rename every staged file onto its place beside --out, the model file last (OpenVINO: the .bin
    before the .xml; ONNX: the .ort before the .onnx), each fsynced first."""
    for path in sorted(stage.iterdir(), key=lambda p: p == staged):
        final = out if path == staged else out.with_name(out.stem + path.suffix)
        if path.is_dir():  # .mlpackage
            if final.exists():
                shutil.rmtree(final)
        else:
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(path, final)


def _summary(request, fmt, target, card, files, parity, unverified, calibration, check_set, notes) -> dict:
    return {
        "model": str(request.out),
        "format": fmt.name,
        "sha256": files.get(request.out.name),  # None for a .mlpackage directory: see "files"
        "files": files,
        "file_bytes": formats.size_bytes(request.out),
        "precision": target.precision,
        "target": target.name,
        "target_note": target.note,
        "runtime": fmt.platform,
        "notes": notes,
        "card_inside": fmt.card_inside is not None,
        "tta": request.tta,
        "source": {"weights": str(request.source), "sha256": sha256_file(_weights_path(request.source))},
        "parity": None
        if parity is None
        else {
            **parity.to_dict(),
            "sample": check_set.describe(),
            "shared_with_calibration": _shared(check_set, calibration),
            "limits": asdict(target.limits),
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


def _shared(check_set: samples.SampleSet | None, calibration: samples.SampleSet | None) -> int:
    """How many check images are also calibration images (0 unless the user asked for it)."""
    if check_set is None or calibration is None:
        return 0
    return len({p.resolve() for p in check_set.files} & {p.resolve() for p in calibration.files})


def _run_card(source: Path) -> ModelCard:
    from skutag.trainer.weights import read_card

    return read_card(_weights_path(source))


def _weights_path(source: Path) -> Path:
    from skutag.trainer.weights import resolve_weights

    return resolve_weights(source)
