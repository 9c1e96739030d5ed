"""`skutag export`: the click command around exporter.pipeline (heavy imports inside the function).

Its choices and the --format help come from the one model-format table, `skutag.artifacts`."""

from __future__ import annotations

from pathlib import Path

import click

from skutag import artifacts
from skutag.card import TTA_MODES
from skutag.options import input_path, out_option

# From the one model-format table (skutag.artifacts imports neither torch nor a converter).
PRECISIONS = artifacts.PRECISIONS
INT8_TARGETS = artifacts.INT8_TARGETS
CALIB_METHODS = artifacts.CALIB_METHODS
INPUT_KINDS = tuple(dict.fromkeys(kind for f in artifacts.FORMATS.values() for kind in f.input_kinds))
FORMATS = artifacts.FORMAT_NAMES
FORMAT_HELP = " ".join(
    f"{f.name}: {f.suffix}, {f.platform} ({', '.join(f.precisions)})." for f in artifacts.FORMATS.values()
)
TTA_CHOICES = ("none", *TTA_MODES)  # the card's modes (skutag.card), built by exporter.tta
_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command()
@input_path("run")
@out_option(
    "The file to write: MODEL.onnx, .pte, .tflite, .xml (+ .bin) or .mlpackage; the report goes to "
    "MODEL.<ext>.json.",
    file=True,
)
@click.option(
    "--format",
    "format_name",
    type=click.Choice(FORMATS),
    default="onnx",
    show_default=True,
    help=FORMAT_HELP + " Each is checked by running it in its own runtime where it runs.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="fp32: any device. fp16: for GPUs (CUDA/TensorRT); NOT faster on CPUs, where ONNX Runtime "
    "computes fp16 in fp32. int8: statically quantised, calibrated on --calib images.",
)
@click.option(
    "--int8-target",
    type=click.Choice(INT8_TARGETS),
    default="cpu",
    show_default=True,
    help="cpu: uint8 activations, int8 per-channel weights (QDQ; convs fuse into QLinearConv). "
    "tensorrt: symmetric int8 activations and weights (QDQ).",
)
@click.option(
    "--calib",
    "calib_dir",
    type=_DIR,
    default=None,
    help="Real images (searched recursively) to calibrate int8 on, decoded exactly as `skutag run` "
    "decodes them. Required for int8; never replaced by default data.",
)
@click.option(
    "--calib-method",
    type=click.Choice(CALIB_METHODS),
    default="minmax",
    show_default=True,
    help="How activation ranges are chosen from the calibration images (ORT's calibrators).",
)
@click.option(
    "--calib-size",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Calibration images to use (evenly spaced over the sorted file list: deterministic).",
)
@click.option(
    "--input",
    "input_kind",
    type=click.Choice(INPUT_KINDS),
    default="uint8",
    show_default=True,
    help="uint8: [batch, H, W, 3] RGB pixels, normalised inside the graph. "
    "float: classic float32 [batch, 3, H, W], normalised by the caller.",
)
@click.option(
    "--embeddings", is_flag=True, help="Add an `embedding` output: the pooled penultimate features."
)
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Compare the exported model in its own runtime with PyTorch; a failed check writes nothing.",
)
@click.option(
    "--check-images",
    "check_dir",
    type=_DIR,
    default=None,
    help="Images for the parity check. int8: never the calibration images; by default the --calib "
    "images that calibration did not use. fp32/fp16: default the --calib images if given, else synthetic ones.",
)
@click.option(
    "--check-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Images for the parity check (evenly spaced over the sorted file list).",
)
@click.option(
    "--ort-format", is_flag=True, help="Also write MODEL.ort, the format ONNX Runtime Mobile loads."
)
@click.option(
    "--tta",
    type=click.Choice(TTA_CHOICES),
    default="none",
    show_default=True,
    help="flip: average the calibrated probabilities (and attribute heads) of each image and its horizontal "
    "mirror inside the model file; twice the backbone's work per image. The embedding stays the image's own.",
)
def export(
    run: str,
    out: str,
    precision: str,
    int8_target: str,
    calib_dir: Path | None,
    calib_method: str,
    calib_size: int,
    input_kind: str,
    embeddings: bool,
    check: bool,
    check_dir: Path | None,
    check_size: int,
    ort_format: bool,
    format_name: str,
    tta: str,
) -> None:
    """Export the trained model in RUN (a run dir or a .safetensors with a card) to one checked model file.

    ONNX by default (--format for ExecuTorch, LiteRT, OpenVINO or Core ML). The file takes
    uint8 pixels by default and outputs `probs`; its card travels in MODEL.<ext>.json beside
    it (and inside ONNX, OpenVINO and Core ML files).
    """
    from skutag.exporter.pipeline import ExportRequest, run_export

    request = ExportRequest(
        source=Path(run),
        out=Path(out),
        precision=precision,
        int8_target=int8_target,
        input_kind=input_kind,
        embeddings=embeddings,
        calib_dir=calib_dir,
        calib_method=calib_method,
        calib_size=calib_size,
        check=check,
        check_dir=check_dir,
        check_size=check_size,
        ort_format=ort_format,
        format=format_name,
        tta=tta,
    )
    result = run_export(request)
    if format_name == "onnx":
        _print_summary(result.summary, result.ort_model)
    else:
        _print_edge_summary(result.summary)


def _print_summary(summary: dict, ort_model: Path | None) -> None:
    size_mb = summary["file_bytes"] / 1e6
    click.echo(f"wrote {summary['model']} ({summary['target']}, {size_mb:.1f} MB, opset {summary['opset']})")
    calibration = summary["calibration"]
    if calibration:
        click.echo(
            f"calibrated on {calibration['count']} images ({calibration['method']}), "
            f"int8 target {calibration['int8_target']}; head after the pooled features in float"
        )
    parity = summary["parity"]
    if parity:
        disjoint = (
            ", none used for calibration" if calibration and not parity["shared_with_calibration"] else ""
        )
        embedding = (
            f", embedding error max {parity['max_embedding_error']:.2e}"
            if parity["max_embedding_error"] is not None
            else ""
        )
        click.echo(
            f"parity vs PyTorch on {parity['images']} check images{disjoint}: per-image TV max "
            f"{parity['max_tv']:.2e}, p99 {parity['p99_tv']:.2e}; top-1 agreement {parity['top1_agreement']:.1%}, "
            f"top-{parity['k']} overlap {parity['top5_overlap']:.1%}{embedding}"
        )
    else:
        click.echo("parity check skipped (--no-check)")
    if ort_model:
        click.echo(f"wrote {ort_model}")
    click.echo(f"report: {summary['model']}.json")


def _print_edge_summary(summary: dict) -> None:
    size_mb = summary["file_bytes"] / 1e6
    click.echo(f"wrote {summary['model']} ({summary['format']} {summary['precision']}, {size_mb:.1f} MB)")
    calibration = summary["calibration"]
    if calibration:
        click.echo(f"calibrated on {calibration['count']} images; {summary['notes'].get('quantizer', '')}")
    parity = summary["parity"]
    if parity:
        embedding = (
            f", embedding error max {parity['max_embedding_error']:.2e}"
            if parity["max_embedding_error"] is not None
            else ""
        )
        click.echo(
            f"parity vs PyTorch in {parity['runtime']} on {parity['images']} check images: per-image TV max "
            f"{parity['max_tv']:.2e}, p99 {parity['p99_tv']:.2e}; top-1 agreement {parity['top1_agreement']:.1%}, "
            f"top-{parity['k']} overlap {parity['top5_overlap']:.1%}{embedding}"
        )
    elif summary["parity_unverified"]:
        click.echo(f"parity NOT verified: {summary['parity_unverified']}")
    else:
        click.echo("parity check skipped (--no-check)")
    click.echo(f"report: {summary['model']}.json")
