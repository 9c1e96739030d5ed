"""The CPU suite: the CPU figures of five suites from one command (`make bench-cpu`; RESULTS.md, cpu_suite).

Runs, one after another on a quiet machine, each printing its own markdown:
  1. decode: skutag.images vs full decode + torchvision (issue 2);
  2. exporter: model-only images/s and size of ResNet-50 fp32/fp16/int8 (issue 4);
  3. one ResNet-50 run on a synthetic catalog, exported fp32/fp16/int8, then `skutag eval`
     of each and `skutag bench` of all of them beside the eager PyTorch baseline, model-only
     and end to end (issues 4 and 6);
  4. batchrun: end to end vs the plain PyTorch loop vs model-only, and memory at 2,000
     and 10,000 images (issue 5);
  5. trainer: frozen backbone vs the plain loop, 30 epochs cached vs not (issue 3).

    python -m benchmarks.cpu_suite [--work bench-out/cpu-suite] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import header, load_average


def run_steps(steps: dict[str, list[list[object]]], work: Path, only: list[str] | None = None) -> None:
    """Run each step's commands in order, echoing their stdout; stderr goes to WORK/STEP.log."""
    for name, commands in steps.items():
        if only and name not in only:
            continue
        for command in commands:
            command = [str(c) for c in command]
            print(f"\n$ {' '.join(command[1:] if command[0] == sys.executable else command)}", flush=True)
            started = time.perf_counter()
            log = work / f"{name}.log"
            with open(log, "a") as f:
                result = subprocess.run(command, stdout=subprocess.PIPE, stderr=f, text=True)
            print(result.stdout, flush=True)
            print(f"({time.perf_counter() - started:.0f} s)", flush=True)
            if result.returncode != 0:
                sys.exit(f"step {name} failed (exit {result.returncode}); see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench-out/cpu-suite"))
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks the suite runs, figures meaningless"
    )
    parser.add_argument(
        "--only", nargs="*", help="step names to run (decode export artifacts batchrun train)"
    )
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    q = args.quick
    data, shop, run, models = work / "labelled", work / "shop", work / "run", work / "models"
    fp32, fp16, int8 = (models / f"resnet50-{p}.onnx" for p in ("fp32", "fp16", "int8"))
    size = "96" if q else "224"
    skutag = [sys.executable, "-m", "skutag"]
    # --quick trains a degenerate model on a few dozen images: only the plumbing is checked, not parity.
    check = ["--no-check"] if q else ["--check-images", data / "val"]
    steps = {
        "decode": [
            [sys.executable, "-m", "benchmarks.image_suite", *(["--n", "30", "--rounds", "1"] if q else [])]
        ],
        "export": [
            [
                sys.executable,
                "-m",
                "benchmarks.export_suite",
                "--arch",
                "resnet50",
                "--image-size",
                size,
                "--batch-sizes",
                "1,32",
                "--reps",
                "3" if q else "7",
                "--threads",
                "2",
            ]
        ],
        "artifacts": [
            [
                *skutag,
                "synth",
                data,
                "--n",
                "80" if q else "640",
                "--classes",
                "8",
                "--split",
                "0.25",
                "--size",
                "256-640",
                "--seed",
                "0",
            ],
            [*skutag, "synth", shop, "--n", "40" if q else "500", "--classes", "8", "--seed", "1"],
            [
                *skutag,
                "train",
                data,
                "--out",
                run,
                "--arch",
                "resnet50",
                "--weights",
                "none",
                "--freeze",
                "backbone",
                "--cache-features",
                "--adapt-bn",
                "--augment",
                "none",
                "--lr",
                "1e-2",
                "--image-size",
                size,
                "--seed",
                "0",
            ],
            [*skutag, "export", run, "--out", fp32, *check],
            [*skutag, "export", run, "--out", fp16, "--precision", "fp16", *check],
            [*skutag, "export", run, "--out", int8, "--precision", "int8", "--calib", data / "train", *check],
            *[
                [*skutag, "eval", m, data / "val", "--out", work / f"eval-{m.stem}"]
                for m in (fp32, fp16, int8)
            ],
            [
                *skutag,
                "bench",
                fp32,
                fp16,
                int8,
                "--out",
                work / "bench",
                "--batch-sizes",
                "1,32",
                "--device",
                "cpu",
                "--images",
                shop,
                "--data",
                data / "val",
                "--baseline",
                "torch",
                "--run",
                run,
                "--min-seconds",
                "1" if q else "3",
            ],
        ],
        "batchrun": [
            [
                sys.executable,
                "-m",
                "benchmarks.batchrun_suite",
                "--images",
                "60" if q else "1000",
                "--fp32",
                fp32,
                "--int8",
                int8,
                "--memory-sizes",
                "100,300" if q else "2000,10000",
                "--cache",
                work / "batchrun-cache",
            ]
        ],
        "train": [
            [
                sys.executable,
                "-m",
                "benchmarks.train_suite",
                "--arch",
                "resnet50",
                "--images",
                "48" if q else "240",
                "--image-size",
                "64" if q else "112",
                "--epochs",
                "30",
                "--out",
                work / "train.md",
            ]
        ],
    }
    load = load_average()
    run_steps(steps, work, args.only)
    print("\n## The whole suite\n")
    print(
        header(
            "torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "pillow", "numpy", before=load
        )
    )
    if (work / "bench" / "results.md").exists():
        print((work / "bench" / "results.md").read_text())
    for m in (fp32, fp16, int8):
        metrics = work / f"eval-{m.stem}" / "metrics.json"
        if metrics.exists():
            print(f"eval {m.name}: accuracy {json.loads(metrics.read_text())['accuracy']:.4f}")


if __name__ == "__main__":
    main()
