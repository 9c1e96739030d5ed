"""Is `skutag run` as fast as 0.1.0's? Whole process 1.10x 0.1.0, in-run 0.91-1.02x (RESULTS.md, ray_suite; history/0.1-0.3.md, issues 9, 10, 21).

Whole-process `skutag run` against the previous release and the plain PyTorch loop, on real photos.

    git worktree add /tmp/skutag-0.1.0 2c8ac00
    python -m benchmarks.experiments.release_compare --model int8.onnx --images ../shared/data --old /tmp/skutag-0.1.0

Each round runs, as separate processes over the same files: the previous release's
`skutag run` (its own source tree on PYTHONPATH), this tree's `skutag run`, and the plain
PyTorch loop (torchvision transforms + DataLoader + eager ResNet-50 of the card's classes).
Rounds interleave, so a busy machine slows all three alike; the table gives the median
images/s of each (files / whole-process wall time, start-up included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, header, photos

CPU_SECONDS: dict[str, list[float]] = {}  # command label -> user + system CPU s of each run, workers included


def timed(command: list[str], *, cwd: Path, pythonpath: Path, label: str = "") -> float:
    """Wall seconds of one process; its CPU seconds (and its reaped workers') go to CPU_SECONDS[label]."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    CPU_SECONDS.setdefault(label, []).append(cpu)
    return wall


def plain_loop(model_path: str, images: str, batch_size: int) -> None:
    """The eager loop as a process of its own (called with --plain)."""
    import onnxruntime
    from skutag.trainer.model import build_model

    from skutag.bench.baselines import plain_torch_loop
    from skutag.card import METADATA_KEY, ModelCard

    meta = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"]).get_modelmeta()
    card = ModelCard.from_json(meta.custom_metadata_map[METADATA_KEY])
    plain_torch_loop(build_model(card.arch, card.num_classes), card, images, batch_size=batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--old", type=Path, required=True, help="source tree of the previous release")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-plain-loop", action="store_true", help="skip the (slow) plain PyTorch loop")
    args = parser.parse_args()
    if args.plain:
        plain_loop(args.model, args.images, args.batch_size)
        return
    files = len(photos(args.images))
    model, images = str(Path(args.model).resolve()), str(Path(args.images).resolve())
    walls: dict[str, list[float]] = {"previous release": [], "this tree": []}
    inner: dict[str, list[float]] = {"previous release": [], "this tree": []}  # run_catalog's wall_s
    if not args.no_plain_loop:
        walls["plain PyTorch loop"] = []
    with tempfile.TemporaryDirectory() as scratch:
        for round_number in range(args.rounds):
            run = [sys.executable, "-m", "skutag", "run", model, images, "--no-progress", "--max-error-rate", "1",
                   "--batch-size", str(args.batch_size)]  # fmt: skip
            old_out, new_out = Path(scratch, f"old-{round_number}"), Path(scratch, f"new-{round_number}")
            walls["previous release"].append(
                timed(
                    [*run, "--out", str(old_out)], cwd=args.old, pythonpath=args.old, label="previous release"
                )
            )
            walls["this tree"].append(
                timed([*run, "--out", str(new_out)], cwd=ROOT, pythonpath=ROOT, label="this tree")
            )
            inner["previous release"].append(in_run(old_out))
            inner["this tree"].append(in_run(new_out))
            if args.no_plain_loop:
                continue
            plain = [sys.executable, "-m", "benchmarks.experiments.release_compare", "--plain", "--model", model,
                     "--images", images, "--old", str(args.old), "--batch-size", str(args.batch_size)]  # fmt: skip
            walls["plain PyTorch loop"].append(timed(plain, cwd=ROOT, pythonpath=ROOT))
    print(header("onnxruntime", "onnxruntime-gpu", "torch", "pillow") + "\n")
    baseline = files / statistics.median(walls.get("plain PyTorch loop") or walls["previous release"])
    print(f"{files} photos, {args.rounds} interleaved rounds, whole process (start-up included)\n")
    base_name = "plain loop" if "plain PyTorch loop" in walls else "previous release"
    print(f"| | images/s (median) | vs {base_name} | walls s |")
    print("|---|---:|---:|---|")
    for name, values in walls.items():
        rate = files / statistics.median(values)
        print(f"| {name} | {rate:.1f} | {rate / baseline:.2f}x | {', '.join(f'{v:.1f}' for v in values)} |")
    print(
        "\nInside the run (`wall_s` of each release's summary: listing/planning, decode, inference, Parquet):\n"
    )
    print("| | in-run s per round | this tree / previous (in-run rate, per round) |\n|---|---|---|")
    pairs = zip(inner["previous release"], inner["this tree"], strict=True)
    ratios = ", ".join(f"{old / new:.2f}" for old, new in pairs)
    for name, values in inner.items():
        print(
            f"| {name} | {', '.join(f'{v:.1f}' for v in values)} | {ratios if name == 'this tree' else ''} |"
        )
    print(
        "\nCPU seconds of each whole process, its decode workers included (less sensitive to load than walls):\n"
    )
    print("| | CPU s per round | CPU ms per image (median) |\n|---|---|---:|")
    for name in ("previous release", "this tree"):
        values = CPU_SECONDS[name]
        print(
            f"| {name} | {', '.join(f'{v:.1f}' for v in values)} | {1000 * statistics.median(values) / files:.1f} |"
        )
    whole = zip(walls["previous release"], walls["this tree"], strict=True)
    print(
        f"\nWhole process, this tree / previous (rate, per round): {', '.join(f'{o / n:.2f}' for o, n in whole)}"
    )


def in_run(out: Path) -> float:
    """`wall_s` of a finished run (0.1.0 wrote summary.json, later releases _summary.json)."""
    for name in ("_summary.json", "summary.json"):
        if (out / name).exists():
            return float(json.loads((out / name).read_text())["wall_s"])
    raise SystemExit(f"no summary in {out}")


if __name__ == "__main__":
    main()
