"""Ray engine benchmark: `skutag run --engine ray` against `--engine local`, whole process, same photos.

Both engines run the real CLI in a fresh process on the same catalog: real photos from
`../shared/data/` (catalog-photos/ and clothing/) repeated through a CSV manifest under
different ids up to --images rows, with a part size that keeps every unit's images distinct
(so every row is decoded). Runs alternate (local, ray, local, ray, ...) so that other load
on a shared machine hits both alike; the table gives each pair's ratio. The fixed start-up
cost of each engine is the whole-process time of a one-photo catalog, measured the same way.

    python -m benchmarks.ray_suite --model demo-out/models/resnet50-int8.onnx
    python -m benchmarks.ray_suite --images 2000 --repeats 2          # exports a model into --cache first

Without --model a ResNet-50 is made with the repo's own commands (`skutag synth`, `skutag
train --weights none --freeze backbone --cache-features --adapt-bn`, `skutag export
--precision int8`), as `skutag demo` does.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from benchmarks.machine import cpu_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="ONNX model (default: an int8 ResNet-50 made in --cache)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2, help="local/ray pairs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "skutag-ray-bench")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    model = args.model or int8_resnet50(args.cache)
    photos = sorted(
        p for folder in ("catalog-photos", "clothing") for p in (args.data / folder).rglob("*.jpg")
    )
    manifest, part = photo_manifest(photos, args.images, args.cache)
    one = photo_manifest(photos, 1, args.cache, name="one")[0]
    runs: dict[str, list[dict]] = {"local": [], "ray": [], "local start-up": [], "ray start-up": []}
    for _ in range(args.repeats):
        for engine in ("local", "ray"):
            runs[engine].append(skutag_run(model, manifest, engine, part, args, args.images))
            runs[f"{engine} start-up"].append(skutag_run(model, one, engine, part, args, 1))
    print(report(runs, model, args, len(photos), part))


def int8_resnet50(cache: Path) -> Path:
    """`skutag demo`'s recipe, smaller: synth 240 photos, train the head 10 epochs, export int8."""
    model = cache / "resnet50-int8.onnx"
    if model.exists():
        return model
    steps = [
        ["synth", cache / "train", "--n", "240", "--classes", "6", "--size", "256-512", "--seed", "0"],
        ["train", cache / "train", "--out", cache / "run", "--arch", "resnet50", "--weights", "none",
         "--freeze", "backbone", "--cache-features", "--adapt-bn", "--augment", "none", "--epochs", "10",
         "--lr", "1e-2", "--batch-size", "32", "--image-size", "224", "--val-split", "0.2", "--seed", "0"],
        ["export", cache / "run", "--out", model, "--precision", "int8", "--calib", cache / "train"],
    ]  # fmt: skip
    for step in steps:
        subprocess.run([sys.executable, "-m", "skutag", *map(str, step)], check=True)
    return model


def photo_manifest(photos: list[Path], rows: int, cache: Path, name: str = "photos") -> tuple[Path, int]:
    """A CSV manifest of `rows` ids cycling over `photos`; the part size that keeps units' images distinct."""
    path = cache / f"{name}-{rows}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "path"])
        for row in range(rows):
            writer.writerow([f"r{row // len(photos):02d}/{row % len(photos):05d}", photos[row % len(photos)]])
    return path, min(len(photos), 500)


def skutag_run(model: Path, manifest: Path, engine: str, part: int, args, rows: int) -> dict:
    with tempfile.TemporaryDirectory(dir=args.cache) as out:
        command = [sys.executable, "-m", "skutag", "run", str(model), str(manifest), "--out", out,
                   "--engine", engine, "--batch-size", str(args.batch_size), "--part-size", str(part),
                   "--max-error-rate", "1", "--no-progress"]  # fmt: skip
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"{engine} failed ({result.returncode}): {result.stderr[-2000:]}")
        summary = json.loads((Path(out) / "_summary.json").read_text())
    if summary["rows"] != rows or summary["decoded"] != rows:
        raise SystemExit(f"{engine}: {summary['rows']} rows, {summary['decoded']} decoded, expected {rows}")
    line = f"{engine}: {rows} rows in {wall:.1f} s whole process ({summary['wall_s']:.1f} s in run_catalog)"
    print(line, file=sys.stderr, flush=True)
    return {"wall": wall, "inner": summary["wall_s"], "ok": summary["ok"]}


def report(runs: dict[str, list[dict]], model: Path, args, photos: int, part: int) -> str:
    import onnxruntime
    import ray

    pairs = list(zip(runs["local"], runs["ray"], strict=True))
    lines = [
        f"Machine: {cpu_model()}, {platform.machine()}, Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}, ray {ray.__version__}; {date.today().isoformat()}.",
        f"Model: {model.name}; {args.images} rows over {photos} real photos (CSV manifest, part size {part}), "
        f"--batch-size {args.batch_size}, default workers/threads of each engine.",
        f"Command: python -m benchmarks.ray_suite --images {args.images} --repeats {args.repeats}"
        + (f" --model {model}" if args.model else ""),
        "",
        "| pair | local s | ray s | local images/s | ray images/s | ray / local (throughput) |",
        "|---|---|---|---|---|---|",
    ]
    for number, (local, ray_run) in enumerate(pairs, 1):
        lines.append(
            f"| {number} | {local['wall']:.1f} | {ray_run['wall']:.1f} | {args.images / local['wall']:.1f} | "
            f"{args.images / ray_run['wall']:.1f} | {local['wall'] / ray_run['wall']:.2f} |"
        )
    starts = list(zip(runs["local start-up"], runs["ray start-up"], strict=True))
    lines += ["", "| start-up (one photo, whole process) | local s | ray s |", "|---|---|---|"]
    for number, (local, ray_run) in enumerate(starts, 1):
        lines.append(f"| {number} | {local['wall']:.1f} | {ray_run['wall']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
