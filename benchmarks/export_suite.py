"""Exporter benchmark: model-only ONNX Runtime throughput, file size and agreement of fp32, fp16 and int8.

Each precision is exported by the real `skutag export` pipeline, then timed in the
session `skutag run` would open (`batchrun.predict.infer.open_session`) on a fixed uint8 batch:
warm-up runs, then `--reps` rounds in which each artifact runs once in turn (so a shared
machine's changing load hits them alike), median reported.

Two modes:
- default: random weights (speed and size do not depend on them), int8 calibrated on
  synthetic catalog images, parity check skipped.
- `--run RUN --calib DIR`: a trained run, calibrated on real images; the exports are
  parity-checked, and every artifact (plus `--compare` files, e.g. the previous release's
  int8 export of the same run) is compared with the fp32 file on the images of DIR that
  calibration did not use: top-1 agreement, top-k overlap, per-image total variation
  (max, p99) and the embedding's per-image relative error.

    python -m benchmarks.export_suite                          # quick: resnet18, 64 px, batch 1 and 8
    python -m benchmarks.export_suite --arch resnet50 --image-size 224 --batch-sizes 1,32
    python -m benchmarks.export_suite --run runs/shop --calib photos/ --batch-sizes 1,32 --compare old-int8.onnx
    python -m benchmarks.export_suite --arch resnet50 --image-size 224 --batch-sizes 1,32,256 --device cuda
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from skutag.bench.machine import machine_info, markdown_header

if TYPE_CHECKING:
    from skutag.exporter.parity import Parity


def make_run(work: Path, arch: str, image_size: int, classes: int) -> Path:
    """A run dir with random weights and a card, as the trainer would write it."""
    from skutag.trainer.model import build_model
    from skutag.trainer.weights import save_weights

    from skutag.card import ModelCard

    card = ModelCard.for_training(arch, [f"class_{i}" for i in range(classes)], image_size=image_size)
    run = work / "run"
    save_weights(run / "best.safetensors", build_model(arch, classes, "none").eval(), card)
    card.save(run / "card.json")
    return run


def export_all(
    run: Path, work: Path, calib: Path, calib_size: int, int8_targets: list[str], *, embeddings: bool
) -> tuple[dict[str, Path], dict]:
    """Each artifact's file (fp32, fp16, one int8 per target), and the int8 exports' counts of quantised
    vs float convs in ORT's CPU graph. Unchecked: `agreement` measures them against fp32 instead."""
    from skutag.exporter.pipeline import ExportRequest, run_export

    paths, convs = {}, {}
    for name in ["fp32", "fp16", *(f"int8-{t}" for t in int8_targets)]:
        out = work / f"model-{name}.onnx"
        result = run_export(
            ExportRequest(
                source=run,
                out=out,
                precision=name.split("-")[0],
                int8_target=name.split("-")[-1],
                embeddings=embeddings,
                calib_dir=calib if name.startswith("int8") else None,
                calib_size=calib_size,
                check=False,
            )
        )
        paths[name] = out
        if result.summary["calibration"]:
            convs[name] = result.summary["calibration"]["ort_cpu_graph"]
    return paths, convs


def open_session(path: Path, device: str, threads: int, batch: int):
    """The session `skutag run` would open for this file (provider options from the export-target table)."""
    from skutag.batchrun.predict.infer import open_session as run_session
    from skutag.batchrun.predict.model import read_contract

    cpu_threads = threads if device == "cpu" else None
    return run_session(read_contract(path), device, batch_size=batch, threads=cpu_threads)[0]


def runner(path: Path, device: str, batch: int, image_size: int, threads: int) -> Callable[[], None]:
    """One inference on a fixed uint8 batch; on a GPU with IO binding (input and outputs on the device)."""
    session = open_session(path, device, threads, batch)
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
    """Median throughput of each runner, timed round-robin so that load changes hit every artifact alike."""
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


def agreement(
    paths: dict[str, Path], calib: Path, calib_size: int, check_size: int
) -> tuple[dict[str, tuple[Parity, list[str]]], int]:
    """Every artifact against the fp32 file on the images of `calib` that calibration did not use
    (the fp32 file is PyTorch within 1e-4 per image; `skutag export` gates against PyTorch), with
    what the export gate of each file's target says about these figures."""
    from skutag.exporter.parity import compare
    from skutag.exporter.samples import load_files, plan
    from skutag.exporter.targets import TARGETS

    from skutag.runtime import create_session, model_card, runtime_target

    card = model_card(paths["fp32"])
    _, check_files = plan(calib, calib_size, None, check_size)
    pixels = load_files(check_files, card, str(calib)).pixels
    outputs = {}
    for name, path in paths.items():
        session, _ = create_session(path, "cpu")
        names = [o.name for o in session.get_outputs()]
        chunks = [session.run(names, {"image": pixels[i : i + 16]}) for i in range(0, len(pixels), 16)]
        outputs[name] = [np.concatenate([c[j] for c in chunks]) for j in range(len(names))]
    probs, embedding = outputs["fp32"][0], outputs["fp32"][1] if len(outputs["fp32"]) > 1 else None
    figures = {}
    for name, values in outputs.items():
        if name != "fp32":
            other = values[1] if len(values) > 1 and embedding is not None else None
            parity = compare(probs, values[0], embedding if other is not None else None, other)
            limits = TARGETS[runtime_target(model_card(paths[name])).name].limits
            figures[name] = (parity, parity.failures(limits))
    return figures, len(pixels)


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
@click.option(
    "--run",
    "run_dir",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="A trained run (--arch, --image-size, --classes then come from its card). Needs --calib.",
)
@click.option(
    "--calib",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Real calibration images; the agreement check uses the others under it.",
)
@click.option("--check-size", type=int, default=200, show_default=True, help="Agreement images (with --run).")
@click.option(
    "--int8-targets",
    default=None,
    help="Comma-separated int8 targets to export (default: tensorrt with --device tensorrt, else cpu).",
)
@click.option(
    "--compare",
    "extra",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="More ONNX files of the same run to time and compare with fp32 (e.g. an earlier release's int8).",
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
    run_dir: Path | None,
    calib: Path | None,
    check_size: int,
    int8_targets: str | None,
    extra: tuple[Path, ...],
) -> None:

    from skutag.card import ModelCard
    from skutag.runtime import gpu_present
    from skutag.synth import SynthSpec, make_catalog

    if device != "cpu" and not gpu_present():
        raise click.ClickException(f"--device {device}: no NVIDIA GPU on this machine")
    if (run_dir is None) != (calib is None):
        raise click.UsageError("--run and --calib go together")
    sizes = [int(b) for b in batch_sizes.split(",")]
    targets = (int8_targets or ("tensorrt" if device == "tensorrt" else "cpu")).split(",")
    with tempfile.TemporaryDirectory(prefix="skutag-bench-export-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        if run_dir is None:
            calib = work / "calib"
            make_catalog(
                calib, SynthSpec(count=calib_size, classes=classes, min_size=image_size + 40, max_size=400)
            )
            run = make_run(work, arch, image_size, classes)
        else:
            run = run_dir
            card = ModelCard.load(run_dir / "card.json")
            arch, image_size = card.arch, card.image_size
        paths, convs = export_all(run, work, calib, calib_size, targets, embeddings=run_dir is not None)
        export_s = time.perf_counter() - started
        paths |= {p.name: p for p in extra}
        figures, checked = agreement(paths, calib, calib_size, check_size) if run_dir else ({}, 0)
        names = list(paths)
        by_batch = {
            b: images_per_second(
                {n: runner(paths[n], device, b, image_size, threads) for n in names}, b, warmup, reps
            )
            for b in sizes
        }
        rows = {n: {b: by_batch[b][n] for b in sizes} for n in names}
        megabytes = {n: paths[n].stat().st_size / 1e6 for n in names}

    header = " | ".join(f"batch {b} img/s" for b in sizes)
    ratios = " | ".join(f"x fp32 @{b}" for b in sizes)
    print(f"## Exporter: {arch} {image_size}px, ONNX Runtime {device}, model-only\n")
    print(f"| artifact | file MB | size vs fp32 | {header} | {ratios} |")
    print("|---|---:|---:|" + "---:|" * (2 * len(sizes)))
    for n in names:
        speeds = " | ".join(f"{rows[n][b]:.1f}" for b in sizes)
        speedups = " | ".join(f"{rows[n][b] / rows['fp32'][b]:.2f}" for b in sizes)
        print(
            f"| {n} | {megabytes[n]:.1f} | {megabytes[n] / megabytes['fp32']:.2f} | {speeds} | {speedups} |"
        )
    print(
        "\nTimed round-robin (every artifact in turn, each run) so ratios survive changing load; "
        f"ORT intra-op threads {threads if device == 'cpu' else 1}; median of {reps} runs after {warmup} "
        f"warm-up; exports took {export_s:.0f} s.\n"
    )
    if figures:
        print(f"Agreement with the fp32 file on {checked} images of {calib} that calibration did not use:\n")
        print(
            "| artifact | top-1 | top-k overlap | TV p99 | TV max | TV mean | embedding error p99 | max "
            "| export gate |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for n, (f, problems) in figures.items():
            emb = (
                f"{f.p99_embedding_error:.3f} | {f.max_embedding_error:.3f}"
                if f.max_embedding_error is not None
                else "- | -"
            )
            print(
                f"| {n} | {f.top1_agreement:.1%} | {f.top5_overlap:.1%} | {f.p99_tv:.3f} | {f.max_tv:.3f} "
                f"| {f.mean_tv:.4f} | {emb} | {'fail: ' + '; '.join(problems) if problems else 'pass'} |"
            )
        print()
    print(markdown_header(machine_info("torch", "onnx", "onnxruntime-gpu", "onnxruntime")))
    source = f"{calib_size} images of {calib}" if run_dir else "synthetic catalog images"
    for name, count in convs.items():
        print(
            f"{name}: QDQ, minmax calibration on {source}, head after the pooled features in float; ORT's "
            f"optimised CPU graph has {count['quantised_convs']} quantised and {count['float_convs']} float convs."
        )


if __name__ == "__main__":
    main()
