"""Batchrun benchmark: `skutag run` end to end vs the plain PyTorch loop vs ORT model-only.

All in one run on the same images (docs/design.md, the rules of measurement):
  * plain loop: torchvision ImageFolder + Resize(256)/CenterCrop(224)/ToTensor/Normalize
    + DataLoader + eager ResNet-50 under `torch.inference_mode`;
  * `skutag run` through `batchrun.api.run_catalog`, fp32 and (with --int8) int8 models;
  * ORT model-only: the same session settings on a ready uint8 batch of the same size;
  * peak memory (PSS of `skutag run` and its DataLoader workers, from /proc) at growing
    catalog sizes (symlinks cycling over the same images), which should stay flat.

    python -m benchmarks.batchrun_suite                       # small, a few minutes on 2 cores
    python -m benchmarks.batchrun_suite --images 1000 --int8 model_int8.onnx --memory-sizes 2000,10000

Without --fp32 a ResNet-50 with random weights is exported into --cache (speed does not
depend on the weights). Prints a markdown table with the machine, versions and command.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import (
    header,
    load_average,
    measure,
    model_only,
    photos,
    random_onnx,
    repeated_links,
    skutag_command,
)

CLASSES = 10


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="catalog-size synthetic images (600-1200 px)")
    parser.add_argument("--fp32", type=Path, help="fp32 ONNX model (default: random-weight ResNet-50)")
    parser.add_argument("--int8", type=Path, help="int8 ONNX model (from `skutag export --precision int8`)")
    parser.add_argument("--fp16", type=Path, help="fp16 ONNX model (GPU runs: --device cuda)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--workers", type=int, default=None, help="decode workers (default: batchrun's choice)"
    )
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: ORT's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--worker-nice", type=int, default=None, help="decode workers' nice (default: batchrun's)"
    )
    parser.add_argument(
        "--memory-sizes", default="512,2048", help="catalog sizes for peak memory, e.g. 2000,10000"
    )
    parser.add_argument("--skip-plain", action="store_true", help="skip the eager PyTorch baseline")
    parser.add_argument(
        "--splits",
        default="",
        help="more decode/inference splits to try, WORKERSxTHREADS,... e.g. 1x2,2x2,2x1",
    )
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "skutag-bench")
    args = parser.parse_args(argv)

    args.cache.mkdir(parents=True, exist_ok=True)
    load = load_average()
    images = synthetic_images(args.cache, args.images)
    models = {"fp32": args.fp32 or random_onnx(args.cache / "resnet50-random-fp32.onnx", "resnet50", CLASSES)}
    for name in ("int8", "fp16"):
        if getattr(args, name):
            models[name] = getattr(args, name)
    rows = []
    plain = None if args.skip_plain else plain_loop(images, args.batch_size, args.workers)
    if plain is not None:
        rows.append(("plain PyTorch loop (eager fp32)", f"{plain:.1f}", "1.00", "", ""))
    for name, model in models.items():
        model_only = None
        for workers, threads in [(args.workers, args.threads), *_splits(args.splits)]:
            summary = skutag_run(model, images, args, workers=workers, threads=threads)
            model_only = model_only or ort_model_only(model, args, summary.rows)
            e2e = summary.images_per_s
            vs_plain = f"{e2e / plain:.2f}" if plain else ""
            split = (
                f"workers {summary.workers}, ORT threads {threads or 'default'}: decode {summary.decode_s:.1f} s "
                f"(worker CPU), inference {summary.inference_s:.1f} s, write {summary.write_s:.1f} s"
            )
            rows.append((f"skutag run, {name}", f"{e2e:.1f}", vs_plain, f"{e2e / model_only:.2f}", split))
        rows.append(
            (
                f"ORT model-only, {name}",
                f"{model_only:.1f}",
                f"{model_only / plain:.2f}" if plain else "",
                "1.00",
                "",
            )
        )
    memory = [
        (n, peak_memory(models.get("int8", models["fp32"]), images, n, args))
        for n in _sizes(args.memory_sizes)
    ]
    report(rows, memory, args, models, load)


def _sizes(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


# -- inputs ------------------------------------------------------------------------------


def synthetic_images(cache: Path, count: int) -> Path:
    from skutag.synth import SynthSpec, make_catalog

    root = cache / f"catalog-{count}"
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        make_catalog(root, SynthSpec(count=count, classes=CLASSES, seed=0))
        (root / ".complete").write_text("")
    return root


# -- measurements ------------------------------------------------------------------------


def plain_loop(images: Path, batch_size: int, workers: int | None) -> float:
    """images/s of the textbook eager loop (skutag.bench.baselines) with a ResNet-50 of this suite's classes."""
    from skutag.batchrun.decode.loader import default_workers
    from torchvision import models

    from skutag.bench.baselines import plain_torch_loop
    from skutag.card import ModelCard

    card = ModelCard.for_training("resnet50", [f"class{i}" for i in range(CLASSES)])
    model = models.resnet50(num_classes=CLASSES)
    workers = default_workers("cpu") if workers is None else workers
    return plain_torch_loop(model, card, images, batch_size=batch_size, workers=workers)


def _splits(text: str) -> list[tuple[int, int]]:
    """`1x2,2x1` -> [(1 worker, 2 ORT threads), (2 workers, 1 thread)]."""
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item.strip()]


def skutag_run(model: Path, images: Path, args, *, workers: int | None, threads: int | None):
    from skutag.batchrun.api import run_catalog
    from skutag.batchrun.options import RunOptions

    options = RunOptions(
        batch_size=args.batch_size,
        workers=workers,
        threads=threads,
        device=args.device,
        max_error_rate=1.0,
        worker_nice=args.worker_nice,
    )
    with tempfile.TemporaryDirectory(dir=args.cache) as out:
        return run_catalog(model, [str(images)], out, options)


def ort_model_only(model: Path, args, count: int) -> float:
    """The ceiling: the session `skutag run` opens, on ready uint8 batches, `count` images in batches
    (images/s = batch / median latency). On a GPU the batch already lives on the device (IO binding),
    so this is the model alone."""
    batches = max(1, round(count / args.batch_size))
    timing = model_only(
        model, args.device, args.batch_size, args.threads,
        warmup=1, min_repetitions=batches, min_seconds=0.0, max_repetitions=batches,
    )  # fmt: skip
    return timing.images_per_s


def peak_memory(model: Path, images: Path, count: int, args) -> float:
    """Peak memory (MiB, PSS) of `skutag run` plus its DataLoader workers, sampled every 0.1 s from /proc."""
    catalog = repeated_links(photos(images), count, args.cache / f"links-{images.name}-{count}")
    with tempfile.TemporaryDirectory(dir=args.cache) as out:
        command = skutag_command("run", model, catalog, "--out", out, "--device", args.device,
                                 "--batch-size", args.batch_size, "--no-progress")  # fmt: skip
        if args.workers is not None:
            command += ["--workers", str(args.workers)]
        done = measure(command, tree=True, interval=0.1)
        if done.returncode != 0:
            raise RuntimeError(f"skutag run exited {done.returncode}: {' '.join(command)}")
    return done.peak_pss_mib


# -- report ------------------------------------------------------------------------------


def report(rows, memory, args, models, load: float) -> None:
    from skutag.batchrun.decode.loader import available_cores, default_workers

    print("## Batchrun benchmark\n")
    print(header("torch", "torchvision", "onnxruntime", "onnxruntime-gpu", before=load), end="")
    print(f"- cores available to the run: {available_cores()}, {platform.system()} {platform.release()}")
    print(f"- models: {', '.join(f'{k} = {v}' for k, v in models.items())}")
    workers = args.workers if args.workers is not None else default_workers("cpu")
    print(
        f"- {args.images} images (600-1200 px JPEG/PNG), batch {args.batch_size}, workers {workers}, device {args.device}"
    )
    print()
    print("| pipeline | images/s | x plain loop | x model-only | time split |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if memory:
        print("\n| catalog size | peak memory of skutag run + workers (PSS, MiB) |")
        print("|---|---|")
        for count, mib in memory:
            print(f"| {count} | {mib:.0f} |")


if __name__ == "__main__":
    main()
