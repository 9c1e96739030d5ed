"""`skutag plan` at scale: time and peak RSS of planning manifests of growing size.

    python -m benchmarks.plan_suite --rows 200000,2000000 [--photos ../shared/data]

Each manifest is a CSV of `id,path` rows over real files (the photos, named many times under
different ids, as colour variants and relisted products do), so every row is stat'ed as a
user's would be. Each plan runs in a fresh process (`skutag plan`) under `/usr/bin/time -v`,
whose "Maximum resident set size" is the peak RSS. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from skutag.bench.machine import machine_info, markdown_header


def write_manifest(path: Path, rows: int, files: list[str]) -> None:
    with open(path, "w") as f:
        f.write("id,path\n")
        for i in range(rows):
            f.write(f"sku-{(i * 7919) % rows:09d},{files[i % len(files)]}\n")  # ids not in file order


def plan_once(manifest: Path, out: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) of one `skutag plan` process."""
    command = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        "-m",
        "skutag",
        "plan",
        str(manifest),
        "--out",
        str(out),
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)[1])
    return wall, peak_kb * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="200000,2000000")
    parser.add_argument("--photos", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--scratch", default=None)
    args = parser.parse_args()
    files = sorted(str(p) for p in Path(args.photos).rglob("*.jpg"))
    if not files:
        sys.exit(f"no photos under {args.photos}")
    print(markdown_header(machine_info("pyarrow")) + "\n")
    print("| manifest rows | plan wall s | peak RSS MiB | rows/s |")
    print("|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        for rows in (int(r) for r in args.rows.split(",")):
            manifest = Path(scratch, f"manifest-{rows}.csv")
            write_manifest(manifest, rows, files)
            wall, peak = plan_once(manifest, Path(scratch, f"out-{rows}"))
            print(f"| {rows:,} | {wall:.1f} | {peak / 2**20:.0f} | {rows / wall:,.0f} |", flush=True)
            os.unlink(manifest)


if __name__ == "__main__":
    main()
