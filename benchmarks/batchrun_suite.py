"""Batchrun benchmark: `skutag run` end to end vs the plain PyTorch loop vs ORT model-only.

All in one run on the same images (DESIGN.md, performance method):
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
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from skutag.bench.machine import cpu_model

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
    images = synthetic_images(args.cache, args.images)
    models = {"fp32": args.fp32 or resnet50_onnx(args.cache)}
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
    report(rows, memory, args, models)


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


def resnet50_onnx(cache: Path) -> Path:
    path = cache / "resnet50-random-fp32.onnx"
    if not path.exists():
        import torch
        from skutag.exporter.graph import export_fp32
        from skutag.trainer.model import build_model

        from skutag.card import ModelCard

        torch.manual_seed(0)
        card = ModelCard.for_training("resnet50", [f"class{i}" for i in range(CLASSES)])
        export_fp32(build_model("resnet50", CLASSES).eval(), card, path)
    return path


def linked_catalog(images: Path, count: int, cache: Path) -> Path:
    """`count` distinct paths (symlinks) cycling over the benchmark images."""
    from skutag.bench.baselines import image_files

    root = cache / f"links-{images.name}-{count}"
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        files = image_files(images)
        for i in range(count):
            source = files[i % len(files)]
            (root / f"{i:07d}{source.suffix}").symlink_to(source.resolve())
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
    """The ceiling: ORT's own settings on a ready batch, `count` images in batches. On a GPU the batch
    already lives on the device (IO binding), so this is the model alone."""
    import numpy as np
    from skutag.batchrun.predict.infer import BoundPredictor, open_session
    from skutag.batchrun.predict.model import read_contract

    contract = read_contract(model)
    session, info = open_session(contract, args.device, batch_size=args.batch_size, threads=args.threads)
    if info.device == "cpu":
        size = contract.card.image_size
        batch = np.random.default_rng(0).integers(0, 256, (args.batch_size, size, size, 3), dtype=np.uint8)
        feed = {contract.input_name: batch}

        def step() -> None:
            session.run([contract.scores_output], feed)
    else:
        binding = BoundPredictor(
            session, contract, topk=1, embeddings=False, batch_size=args.batch_size
        ).binding

        def step() -> None:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()

    step()  # warm-up
    batches = max(1, round(count / args.batch_size))
    started = time.perf_counter()
    for _ in range(batches):
        step()
    return batches * args.batch_size / (time.perf_counter() - started)


def peak_memory(model: Path, images: Path, count: int, args) -> float:
    """Peak memory (MiB, PSS) of `skutag run` plus its DataLoader workers, sampled every 0.1 s from /proc."""
    catalog = linked_catalog(images, count, args.cache)
    with tempfile.TemporaryDirectory(dir=args.cache) as out:
        command = [sys.executable, "-m", "skutag", "run", str(model), str(catalog), "--out", out,
                   "--device", args.device, "--batch-size", str(args.batch_size), "--no-progress"]  # fmt: skip
        if args.workers is not None:
            command += ["--workers", str(args.workers)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak = [0]

        def sample() -> None:
            while process.poll() is None:
                peak[0] = max(peak[0], tree_pss(process.pid))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        process.wait()
        sampler.join()
        if process.returncode != 0:
            raise RuntimeError(f"skutag run exited {process.returncode}: {' '.join(command)}")
    return peak[0] / 2**20


def tree_pss(pid: int) -> int:
    """Proportional set size in bytes of `pid` and all its descendants (Linux /proc): pages a forked
    worker shares with its parent count once, split between them (a sum of RSS would count them twice)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError, StopIteration):
            continue
    return total


# -- report ------------------------------------------------------------------------------


def report(rows, memory, args, models) -> None:
    import onnxruntime
    import torch
    import torchvision
    from skutag.batchrun.decode.loader import available_cores, default_workers

    print(f"## Batchrun benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
    print(f"- machine: {cpu_model()}, {available_cores()} cores, {platform.system()} {platform.release()}")
    print(
        f"- python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"onnxruntime {onnxruntime.__version__}"
    )
    print(f"- models: {', '.join(f'{k} = {v}' for k, v in models.items())}")
    workers = args.workers if args.workers is not None else default_workers("cpu")
    print(
        f"- {args.images} images (600-1200 px JPEG/PNG), batch {args.batch_size}, workers {workers}, device {args.device}"
    )
    print(f"- command: `python -m benchmarks.batchrun_suite {' '.join(sys.argv[1:])}`\n")
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
