"""Exporter benchmark: model-only ONNX Runtime CPU throughput and file size of fp32, fp16 and int8.

Each precision is exported by the real `skutag export` pipeline (int8 calibrated on
synthetic catalog images, decoded by skutag.images), then timed in one ORT CPU
session per file on a fixed uint8 batch: warm-up runs, then `--reps` rounds in which
each precision runs once in turn (so a shared machine's changing load hits them
alike), median reported. Weights are random (speed and size do not depend on training),
so the parity check is skipped here; accuracy belongs to `skutag eval`.

    python -m benchmarks.export_suite                          # quick: resnet18, 64 px, batch 1 and 8
    python -m benchmarks.export_suite --arch resnet50 --image-size 224 --batch-sizes 1,32
    python -m benchmarks.export_suite --arch resnet50 --image-size 224 --batch-sizes 1,32,256 --device cuda
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np

from benchmarks.machine import machine_info, markdown_header

PRECISIONS = ("fp32", "fp16", "int8")


def make_run(work: Path, arch: str, image_size: int, classes: int) -> Path:
    """A run dir with random weights and a card, as the trainer would write it."""
    from skutag.card import ModelCard
    from trainer.model import build_model
    from trainer.weights import save_weights

    card = ModelCard.for_training(arch, [f"class_{i}" for i in range(classes)], image_size=image_size)
    run = work / "run"
    save_weights(run / "best.safetensors", build_model(arch, classes, "none").eval(), card)
    card.save(run / "card.json")
    return run


def export_all(
    run: Path, work: Path, calib: Path, calib_size: int, int8_target: str
) -> tuple[dict[str, Path], dict]:
    """Each precision's file, and the int8 export's count of quantised vs float convs in ORT's CPU graph."""
    from exporter.pipeline import ExportRequest, run_export

    paths, convs = {}, {}
    for precision in PRECISIONS:
        out = work / f"model-{precision}.onnx"
        result = run_export(
            ExportRequest(
                source=run,
                out=out,
                precision=precision,
                int8_target=int8_target,
                calib_dir=calib if precision == "int8" else None,
                calib_size=calib_size,
                check=False,
            )
        )
        paths[precision] = out
        if result.summary["calibration"]:
            convs = result.summary["calibration"]["ort_cpu_graph"]
    return paths, convs


def open_session(path: Path, precision: str, device: str, threads: int, batch: int, image_size: int):
    from skutag.runtime import create_session

    if device == "cpu":
        return create_session(path, "cpu", threads=threads)[0]
    options = {}
    if device == "tensorrt":
        shape = (batch, image_size, image_size, 3)
        options = {
            "trt_fp16": precision == "fp16",
            "trt_int8": precision == "int8",
            "trt_profile": ("image", shape, shape),
        }
    return create_session(path, device, **options)[0]


def runner(
    path: Path, precision: str, device: str, batch: int, image_size: int, threads: int
) -> Callable[[], None]:
    """One inference on a fixed uint8 batch; on a GPU with IO binding (input and outputs on the device)."""
    session = open_session(path, precision, device, threads, batch, image_size)
    name = session.get_inputs()[0].name
    pixels = np.random.default_rng(0).integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
    if device == "cpu":
        return lambda: session.run(None, {name: pixels})

    import onnxruntime as ort

    binding = session.io_binding()
    binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(pixels, "cuda", 0))
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda", 0)

    def run() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return run


def images_per_second(
    runs: dict[str, Callable[[], None]], batch: int, warmup: int, reps: int
) -> dict[str, float]:
    """Median throughput of each runner, timed round-robin so that load changes hit every precision alike."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(reps):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: batch / statistics.median(values) for name, values in times.items()}


@click.command()
@click.option("--arch", default="resnet18", show_default=True)
@click.option("--image-size", type=int, default=64, show_default=True)
@click.option("--batch-sizes", default="1,8", show_default=True, help="Comma-separated, e.g. 1,32.")
@click.option("--classes", type=int, default=10, show_default=True)
@click.option("--warmup", type=int, default=3, show_default=True)
@click.option("--reps", type=int, default=20, show_default=True, help="Timed runs per cell (median).")
@click.option("--threads", type=int, default=os.cpu_count(), show_default=True, help="ORT intra-op threads.")
@click.option("--calib-size", type=int, default=32, show_default=True, help="int8 calibration images.")
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda", "tensorrt"]),
    default="cpu",
    show_default=True,
    help="ORT provider; GPUs are timed with IO binding (input and outputs stay on the device).",
)
def main(
    arch: str,
    image_size: int,
    batch_sizes: str,
    classes: int,
    warmup: int,
    reps: int,
    threads: int,
    calib_size: int,
    device: str,
) -> None:

    from skutag.runtime import gpu_present
    from skutag.synth import SynthSpec, make_catalog

    if device != "cpu" and not gpu_present():
        raise click.ClickException(f"--device {device}: no NVIDIA GPU on this machine")
    sizes = [int(b) for b in batch_sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="skutag-bench-export-") as tmp:
        work = Path(tmp)
        calib = work / "calib"
        make_catalog(
            calib, SynthSpec(count=calib_size, classes=classes, min_size=image_size + 40, max_size=400)
        )
        started = time.perf_counter()
        int8_target = "tensorrt" if device == "tensorrt" else "cpu"
        run = make_run(work, arch, image_size, classes)
        paths, convs = export_all(run, work, calib, calib_size, int8_target)
        export_s = time.perf_counter() - started
        by_batch = {
            b: images_per_second(
                {p: runner(paths[p], p, device, b, image_size, threads) for p in PRECISIONS}, b, warmup, reps
            )
            for b in sizes
        }
        rows = {p: {b: by_batch[b][p] for b in sizes} for p in PRECISIONS}
        megabytes = {p: paths[p].stat().st_size / 1e6 for p in PRECISIONS}

    header = " | ".join(f"batch {b} img/s" for b in sizes)
    ratios = " | ".join(f"x fp32 @{b}" for b in sizes)
    print(f"## Exporter: {arch} {image_size}px, ONNX Runtime {device}, model-only\n")
    print(f"| precision | file MB | size vs fp32 | {header} | {ratios} |")
    print("|---|---:|---:|" + "---:|" * (2 * len(sizes)))
    for p in PRECISIONS:
        speeds = " | ".join(f"{rows[p][b]:.1f}" for b in sizes)
        speedups = " | ".join(f"{rows[p][b] / rows['fp32'][b]:.2f}" for b in sizes)
        print(
            f"| {p} | {megabytes[p]:.1f} | {megabytes[p] / megabytes['fp32']:.2f} | {speeds} | {speedups} |"
        )
    print(
        "\nTimed round-robin (fp32, fp16, int8 in turn, each run) so ratios survive changing load; "
        f"ORT intra-op threads {threads if device == 'cpu' else 1}; median of {reps} runs after {warmup} "
        f"warm-up; exports took {export_s:.0f} s.\n"
    )
    print(markdown_header(machine_info("torch", "onnx", "onnxruntime-gpu", "onnxruntime")))
    print(
        f"int8: --int8-target {int8_target} QDQ, minmax calibration on synthetic catalog images; "
        f"ORT's optimised CPU graph has {convs['quantised_convs']} quantised and {convs['float_convs']} float convs."
    )


if __name__ == "__main__":
    main()
