"""Edge formats side by side: peak RSS of int8 export, and size / latency / agreement / accuracy per format.

`memory`: every format's int8 export (`skutag export --format F --precision int8`) run
as a child process on N calibration images (the real photos repeated by symlinks to
reach N), its peak resident set (VmHWM) read from /proc while it runs (`benchmarks.common.measure`). `speed`: every format x precision exported from one run through the real CLI
(each checked in its runtime; the report's parity figures give top-1 agreement with
PyTorch on check images disjoint from calibration), then `skutag bench` on all files at
batch 1 (edge is batch 1), with accuracy on labelled images. Pin the cores with
`taskset -c 0,1` to measure "on 2 cores".

    python -m benchmarks.edge_suite memory --arch resnet50 --sizes 200,1000
    python -m benchmarks.edge_suite memory --run RUN --sizes 200,1000 --formats onnx,openvino
    python -m benchmarks.edge_suite speed --run RUN --data ../shared/data/catalog-photos
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from benchmarks.common import DATA, header, measure, photos, random_run, repeated_links, skutag_command
from skutag.artifacts import FORMAT_NAMES, get

# The one model-format table: every format, its suffix, and the precisions worth measuring on a CPU.
FORMATS = FORMAT_NAMES


@click.group()
def main() -> None:
    """Edge-format benchmarks (see the module docstring)."""


@main.command()
@click.option(
    "--run",
    "run_dir",
    type=click.Path(exists=True, path_type=Path),
    help="Trained run (default: random weights).",
)
@click.option("--arch", default="resnet50", show_default=True, help="Architecture for random weights.")
@click.option("--image-size", default=224, show_default=True)
@click.option(
    "--photos", "photo_dir", type=click.Path(exists=True, path_type=Path), default=DATA / "catalog-photos"
)
@click.option(
    "--check",
    type=click.Path(exists=True, path_type=Path),
    default=DATA / "clothing",
    help="Parity-check images (other photos, so calibration takes exactly N).",
)
@click.option("--sizes", default="200,1000", show_default=True, help="Calibration image counts.")
@click.option(
    "--formats",
    "names",
    default=",".join(f for f in FORMATS if "int8" in get(f).precisions),  # Core ML offers no int8
    show_default=True,
)
def memory(
    run_dir: Path | None, arch: str, image_size: int, photo_dir: Path, check: Path, sizes: str, names: str
) -> None:
    """Peak RSS of int8 export per format and calibration size."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="skutag-edge-mem-") as tmp:
        work = Path(tmp)
        run = run_dir or random_run(work / "run", arch, 6, image_size)
        for size in [int(s) for s in sizes.split(",")]:
            calib = repeated_links(photos(photo_dir), size, work / f"calib-{size}")
            for name in names.split(","):
                out = work / f"{name}-{size}{get(name).suffix}"
                args = [
                    "export",
                    str(run),
                    "--out",
                    str(out),
                    "--format",
                    name,
                    "--precision",
                    "int8",
                    "--calib",
                    str(calib),
                    "--calib-size",
                    str(size),
                    "--check-images",
                    str(check),
                    "--check-size",
                    "16",
                ]
                load = os.getloadavg()[0]
                done = measure(skutag_command(*args))
                rows.append(
                    {
                        "format": name,
                        "calib_images": size,
                        "peak_rss_mb": round(done.peak_rss_mib),
                        "exit": done.returncode,
                        "seconds": round(done.wall_s, 1),
                        "load_before": round(load, 2),
                        "error": done.last_error_line if done.returncode else "",
                    }
                )
                click.echo(json.dumps(rows[-1]), err=True)
    click.echo(header("torch", "onnxruntime-gpu", "executorch", "litert-torch", "openvino", "nncf"))
    click.echo(
        f"run: {run_dir or f'{arch} {image_size} px, random weights'}; calibration: {photo_dir} repeated\n"
    )
    click.echo(
        "| format | calibration images | peak RSS MiB | export s | load before | exit |\n|---|---|---|---|---|---|"
    )
    for r in rows:
        click.echo(
            f"| {r['format']} | {r['calib_images']} | {r['peak_rss_mb']} | {r['seconds']} | {r['load_before']} "
            f"| {r['exit']} {r['error']} |"
        )


@main.command()
@click.option("--run", "run_dir", type=click.Path(exists=True, path_type=Path), required=True)
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    required=True,
    help="Labelled photos (ImageFolder).",
)
@click.option("--calib-size", default=200, show_default=True)
@click.option("--check-size", default=100, show_default=True)
@click.option("--formats", "names", default=",".join(FORMATS), show_default=True)
@click.option("--min-seconds", default=5.0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-out/edge"), show_default=True)
def speed(
    run_dir: Path, data: Path, calib_size: int, check_size: int, names: str, min_seconds: float, out: Path
) -> None:
    """Export every format x precision from RUN, then bench them all at batch 1 with accuracy on DATA."""
    out.mkdir(parents=True, exist_ok=True)
    models, agreement = [], {}
    for name in names.split(","):
        for precision in get(name).for_cpu:
            model = out / f"{name}-{precision}{get(name).suffix}"
            args = [
                "export",
                str(run_dir),
                "--out",
                str(model),
                "--format",
                name,
                "--precision",
                precision,
                "--calib",
                str(data),
                "--calib-size",
                str(calib_size),
                "--check-size",
                str(check_size),
                "--embeddings",  # every report carries the embedding's error too
            ]
            if precision != "int8":
                args += ["--check-images", str(data)]
            started = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "skutag", *args], capture_output=True, text=True)
            click.echo(
                f"{model.name}: exit {result.returncode} in {time.perf_counter() - started:.0f} s "
                f"{result.stderr.strip().splitlines()[-1] if result.returncode else ''}",
                err=True,
            )
            if result.returncode:
                continue
            report = json.loads(Path(str(model) + ".json").read_text())
            agreement[model.name] = report["parity"]
            if report.get("parity_unverified") is None:
                models.append(model)
    load_before = os.getloadavg()
    bench = [
        sys.executable,
        "-m",
        "skutag",
        "bench",
        *map(str, models),
        "--out",
        str(out / "bench"),
        "--batch-sizes",
        "1",
        "--device",
        "cpu",
        "--data",
        str(data),
        "--min-seconds",
        str(min_seconds),
    ]
    subprocess.run(bench, check=True, stdout=subprocess.DEVNULL)
    load_after = os.getloadavg()
    rows = json.loads((out / "bench" / "results.json").read_text())["results"]
    click.echo(header("onnxruntime", "executorch", "ai-edge-litert", "openvino"))
    click.echo(f"load average before the bench {load_before}, after {load_after}\n")
    click.echo(
        "| file | MB | p50 ms | p99 ms | images/s | top-1 agreement with PyTorch (check images) | TV p99 "
        "| embedding error max | accuracy |"
    )
    click.echo("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        parity = agreement.get(r["artifact"]) or {}
        click.echo(
            f"| {r['artifact']} | {r['size_mb']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['images_per_s']:.1f} | {_figure(parity, 'top1_agreement', '.3f')} | "
            f"{_figure(parity, 'p99_tv')} | {_figure(parity, 'max_embedding_error')} | {r['accuracy']:.3f} |"
        )
    fastest = min(rows, key=lambda r: r["p50_ms"])
    onnx = [r for r in rows if r["artifact"].endswith(".onnx")]
    if onnx:
        base = min(onnx, key=lambda r: r["p50_ms"])
        click.echo(
            f"\nfastest at batch 1: {fastest['artifact']} ({fastest['p50_ms']:.2f} ms p50), "
            f"{base['p50_ms'] / fastest['p50_ms']:.2f}x the fastest ONNX file ({base['artifact']})"
        )


def _figure(parity: dict, key: str, spec: str = ".3g") -> str:
    """A parity figure of a report for the table; `-` where the report has none (unverified, no embedding)."""
    value = parity.get(key)
    return "-" if value is None else format(value, spec)


if __name__ == "__main__":
    main()
