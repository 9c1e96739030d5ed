"""`skutag export` end to end: trained weights -> checked ONNX file, its report, optionally an .ort file.

Steps: validate the request (before any heavy work), load the trained model and
card (trainer.weights), choose calibration and check images (disjoint by default,
exporter.samples.plan), export fp32, convert to the target's precision (table in
exporter.targets; int8 keeps its head in float, which is verified on the result), run
the parity check on the final bytes, and only then rename the file onto `--out`. A failed step leaves nothing at `--out`. The report
`MODEL.onnx.json` and the optional `MODEL.ort` are written after the model.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
from skutag.exporter import graph, quantize, samples
from skutag.exporter.parity import Parity, check, torch_outputs
from skutag.exporter.targets import Target, resolve

from skutag.card import ModelCard
from skutag.errors import InputError, SkutagError
from skutag.fsio import atomic_path, atomic_write_json, sha256_file

log = logging.getLogger(__name__)


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
    format: str = "onnx"  # a row of exporter.formats.FORMATS

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


def validate(request: ExportRequest) -> None:
    """Refuse what cannot work before loading anything: no calibration data, an unwritable --out."""
    target = request.target
    if target.quantisation is not None and request.calib_dir is None:
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


def run_export(request: ExportRequest) -> ExportResult:
    """Export, convert, check and write; see the module docstring."""
    from skutag.trainer.weights import load_trained

    if request.format != "onnx":
        from skutag.exporter.edge import run_edge_export

        return run_edge_export(request, _samples)
    validate(request)
    started = time.perf_counter()
    target = request.target
    model, run_card = load_trained(request.source)
    # A card with a review section needs the `embedding` output: batchrun scores it against the class means.
    embeddings = request.embeddings or run_card.review is not None
    module = graph.ExportModule(model, run_card, input_kind=request.input_kind, embeddings=embeddings)
    module.eval()
    card = graph.exported_card(run_card, request.input_kind, target.precision, target.int8_target)
    calibration, check_set = _samples(request, target, run_card)

    parity = None
    with tempfile.TemporaryDirectory(prefix="skutag-export-") as work:
        fp32_path = Path(work) / "fp32.onnx"
        graph.save(graph.to_onnx(module, run_card), fp32_path)
        final = _convert(request, target, fp32_path, Path(work), card, calibration)
        with atomic_path(request.out) as staged:
            graph.save(final, staged)
            if check_set is not None:
                reference = torch_outputs(module, check_set, run_card, request.input_kind)
                parity = check(
                    staged, reference, check_set, run_card, request.input_kind, target.limits, target.name
                )
    ort_model = _write_ort(request.out) if request.ort_format else None
    summary = _summary(request, target, card, final, parity, calibration, check_set, started, ort_model)
    if target.quantisation is not None:
        summary["calibration"]["ort_cpu_graph"] = _conv_fusion(request.out, target)
    report = request.out.with_name(request.out.name + ".json")
    atomic_write_json(report, summary)
    return ExportResult(request.out, report, ort_model, card, parity, summary)


def _samples(
    request: ExportRequest, target: Target, card: ModelCard
) -> tuple[samples.SampleSet | None, samples.SampleSet | None]:
    """Calibration images (int8 only) and parity-check images (None with --no-check).

    int8: disjoint sets (exporter.samples.plan): --check-images minus the calibration files,
    else the --calib files calibration did not take. Otherwise --check-images, else --calib,
    else synthetic images.
    """
    if target.quantisation is not None:
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


def _convert(
    request: ExportRequest,
    target: Target,
    fp32_path: Path,
    work: Path,
    card: ModelCard,
    calibration: samples.SampleSet | None,
) -> onnx.ModelProto:
    """The target's ModelProto, with `card` (its precision set) in the metadata."""
    if target.quantisation is not None:
        assert calibration is not None  # validate() refused int8 without --calib
        int8_path = work / "int8.onnx"
        quantize.to_int8(
            fp32_path,
            int8_path,
            target.quantisation,
            calibration,
            card,
            input_name=graph.INPUT_NAME,
            input_kind=request.input_kind,
            method=request.calib_method,
        )
        proto = onnx.load(str(int8_path))
        touched = quantize.eight_bit_tail(proto)
        if touched:  # the quantiser did not honour the exclusions: refuse rather than ship it
            raise SkutagError(
                f"int8: nodes after the pooled features use 8-bit tensors: {', '.join(touched)}"
            )
    elif target.precision == "fp16":
        proto = quantize.to_fp16(onnx.load(str(fp32_path)))
    else:
        proto = onnx.load(str(fp32_path))
    # Drop the quantiser's bookkeeping keys; the card and readable keys describe the file.
    kept = [p for p in proto.metadata_props if not p.key.startswith("onnx.")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    graph.set_metadata(proto, card)
    return proto


def _conv_fusion(path: Path, target: Target) -> dict[str, int]:
    """Quantised vs float convs in ORT's optimised CPU graph; a float conv on the CPU target is a warning."""
    convs = quantize.quantised_conv_summary(quantize.optimised_op_types(path))
    if target.name == "int8-cpu" and convs["float_convs"]:
        log.warning("%d convs stayed float in ORT's optimised CPU graph of %s", convs["float_convs"], path)
    return convs


def _write_ort(model_path: Path) -> Path:
    """The ORT-format file ONNX Runtime Mobile loads, beside the model (portable optimisations only)."""
    import onnxruntime as ort

    ort_path = model_path.with_suffix(".ort")
    with atomic_path(ort_path) as staged:
        options = ort.SessionOptions()
        # EXTENDED, not ALL: level-3 layout transforms (NCHWc) are specific to the exporting CPU.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(staged)
        options.add_session_config_entry("session.save_model_format", "ORT")
        options.log_severity_level = 3
        ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return ort_path


def _summary(
    request: ExportRequest,
    target: Target,
    card: ModelCard,
    proto: onnx.ModelProto,
    parity: Parity | None,
    calibration: samples.SampleSet | None,
    check_set: samples.SampleSet | None,
    started: float,
    ort_model: Path | None,
) -> dict[str, Any]:
    import onnxruntime
    import torch

    from skutag import __version__

    def signature(values) -> list[dict[str, Any]]:
        return [
            {
                "name": v.name,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            }
            for v in values
        ]

    return {
        "model": str(request.out),
        "sha256": sha256_file(request.out),
        "file_bytes": request.out.stat().st_size,
        "precision": target.precision,
        "target": target.name,
        "target_note": target.note,
        "opset": graph.OPSET,
        "inputs": signature(proto.graph.input),
        "outputs": signature(proto.graph.output),
        "source": {"weights": str(request.source), "sha256": sha256_file(_weights_path(request.source))},
        "parity": None
        if parity is None
        else {
            **parity.to_dict(),
            "sample": check_set.describe() if check_set else None,
            "shared_with_calibration": _shared(check_set, calibration),
            "limits": asdict(target.limits),
            "reference": "PyTorch fp32 on the CPU",
        },
        "calibration": None
        if calibration is None or target.quantisation is None
        else {
            **calibration.describe(),
            "method": request.calib_method,
            "int8_target": request.int8_target,
            "activation_type": target.quantisation.activation_type,
            "weight_type": target.quantisation.weight_type,
            "per_channel": target.quantisation.per_channel,
            "extra_options": target.quantisation.extra_options,
            "format": "QDQ",
        },
        "ort_format": str(ort_model) if ort_model else None,
        "export_seconds": round(time.perf_counter() - started, 2),
        "card": card.to_dict(),
        "versions": {
            "skutag": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }


def _shared(check_set: samples.SampleSet | None, calibration: samples.SampleSet | None) -> int:
    """How many check images are also calibration images (0 unless the user asked for it)."""
    if check_set is None or calibration is None:
        return 0
    return len({p.resolve() for p in check_set.files} & {p.resolve() for p in calibration.files})


def _weights_path(source: Path) -> Path:
    from skutag.trainer.weights import resolve_weights

    return resolve_weights(source)
