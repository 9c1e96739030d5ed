"""The nightly job: a `--since` rerun after 1% of a catalog changed, against the full run.

    python -m benchmarks.since_suite --model MODEL.onnx [--count 2000] [--changed 0.01]

Builds a catalog of `--count` real photos (../shared/data, copied and repeated to reach the
count), tags it in full (night 1), rewrites `--changed` of the files with other photos'
bytes (new size and mtime), then times `skutag run ... --since night1` (night 2) and, for
reference, a full run of the changed catalog. Whole processes (`python -m skutag run`), so
start-up, planning and the copy of reused rows count. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from skutag.bench.machine import machine_info, markdown_header


def build_catalog(root: Path, photos: list[Path], count: int) -> list[Path]:
    files = []
    for i in range(count):
        source = photos[i % len(photos)]
        target = root / f"batch-{i // 500:02d}" / f"{i:05d}-{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        files.append(target)
    return files


def timed_run(model: Path, catalog: Path, out: Path, *extra: str) -> tuple[float, dict]:
    command = [sys.executable, "-m", "skutag", "run", str(model), str(catalog), "--out", str(out), "--no-progress",
               "--max-error-rate", "1", *extra]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - started
    return wall, json.loads((out / "_summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--photos", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--scratch", default=None)
    args = parser.parse_args()
    photos = sorted(Path(args.photos).rglob("*.jpg"))
    print(markdown_header(machine_info("onnxruntime", "onnxruntime-gpu", "pillow")) + "\n")
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        catalog = Path(scratch, "catalog")
        files = build_catalog(catalog, photos, args.count)
        full_s, full = timed_run(args.model, catalog, Path(scratch, "night1"))
        rng = random.Random(0)
        changed = rng.sample(files, max(1, round(args.count * args.changed)))
        for path in changed:
            path.write_bytes(rng.choice(photos).read_bytes() + b"\0")  # other bytes, other size
        since_s, since = timed_run(
            args.model, catalog, Path(scratch, "night2"), "--since", str(Path(scratch, "night1"))
        )
        fresh_s, _ = timed_run(args.model, catalog, Path(scratch, "fresh"))
    print("| run | rows | decoded | reused | whole process s | vs full |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| night 1, full | {full['rows']:,} | {full['decoded']:,} | 0 | {full_s:.1f} | 1.00 |")
    print(
        f"| night 2, `--since night1` ({len(changed)} changed) | {since['rows']:,} | {since['decoded']:,} | "
        f"{since['reused']:,} | {since_s:.1f} | {since_s / full_s:.3f} |"
    )
    print(
        f"| night 2, full (reference) | {since['rows']:,} | {since['rows']:,} | 0 | {fresh_s:.1f} | {fresh_s / full_s:.2f} |"
    )


if __name__ == "__main__":
    main()
