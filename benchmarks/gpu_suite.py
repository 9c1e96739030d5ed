"""The GPU suite: the CUDA figures of benchmarks/RESULTS.md, on a machine with an NVIDIA GPU.

  1. exporter: ResNet-50 fp32 vs fp16 (and int8 for TensorRT) model-only on the CUDA provider
     with IO binding, batch 1, 32 and 256 (issue 4);
  2. batchrun: `skutag run` end to end vs model-only with fp16 on CUDA (target >= 0.9) (issue 5);
  3. trainer: a short CUDA run with mixed precision and its images/s (issue 3);
  4. the `gpu`-marked tests.

    PYTHONPATH=. python -m benchmarks.gpu_suite [--work bench-out/gpu-suite]

Runs from the source tree on a server that already has torch, torchvision and
onnxruntime-gpu (with its CUDA libraries: pip install 'skutag[gpu]').
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.cpu_suite import run_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench-out/gpu-suite"))
    parser.add_argument("--only", nargs="*", help="step names to run (model export batchrun train tests)")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    fp16 = work / "resnet50-fp16.onnx"
    make_run = (
        f"from pathlib import Path; from benchmarks.export_suite import make_run; make_run(Path('{work}'), "
        "'resnet50', 224, 10)"
    )
    steps = {
        "model": [
            [python, "-c", make_run],
            [
                python,
                "-m",
                "skutag",
                "export",
                work / "run",
                "--out",
                fp16,
                "--precision",
                "fp16",
                "--no-check",
            ],
        ],
        "export": [
            [
                python,
                "-m",
                "benchmarks.export_suite",
                "--arch",
                "resnet50",
                "--image-size",
                "224",
                "--batch-sizes",
                "1,32,256",
                "--device",
                "cuda",
                "--reps",
                "20",
            ]
        ],
        "batchrun": [
            [
                python,
                "-m",
                "benchmarks.batchrun_suite",
                "--images",
                "4000",
                "--device",
                "cuda",
                "--batch-size",
                "256",
                "--skip-plain",
                "--cache",
                work / "batchrun-cache",
            ]
        ],
        "train": [
            [
                python,
                "-m",
                "benchmarks.train_suite",
                "--arch",
                "resnet50",
                "--images",
                "2000",
                "--image-size",
                "224",
                "--batch-size",
                "64",
                "--device",
                "cuda",
                "--out",
                work / "train.md",
            ]
        ],
        "tests": [[python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]],
    }
    run_steps(steps, work, args.only)


if __name__ == "__main__":
    main()
