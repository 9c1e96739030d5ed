"""Ray benchmark: `--engine local`, `--engine ray` and the canonical Ray Data pipeline, alternating.

Each run is a fresh process over the same catalog: the real photos of `../shared/data/`
(catalog-photos/ and clothing/) repeated through a CSV manifest under distinct ids up to
--images rows, with a part size that keeps every unit's images distinct (every row is
decoded). Per round and per model, the three pipelines run one after the other, so load
from elsewhere hits them alike. For each run:

- whole process: wall seconds of the process, start-up and shutdown included;
- steady state: images/s between the rows at 10% and at 90% of the run by `predicted_at` (set
  when a batch's predictions reach the writer; the canonical pipeline sets it in its actor),
  which leaves out start-up, the pipeline's fill and drain, and bursts of blocks that reach
  Ray's driver together;
- start-up: time from the process start to the 10% row, less those rows' time at the steady
  rate (the fixed cost: imports, Ray's processes, actors, the session).

    python -m benchmarks.ray_suite --images 2000 --rounds 2                 # makes int8 + fp32 in --cache
    python -m benchmarks.ray_suite --int8 m-int8.onnx --fp32 m-fp32.onnx --images 200 --rounds 1

Without --int8/--fp32 a ResNet-50 (random backbone, trained head) is made with the repo's
own commands (`skutag synth`, `skutag train --weights none --freeze backbone
--cache-features --adapt-bn`, `skutag export --precision int8|fp32`), as `skutag demo` does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import DATA, header, load_average, photos, repeated_manifest, skutag_command

PIPELINES = ("local", "ray", "canonical")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--int8", type=Path, help="int8 ONNX model (default: made in --cache)")
    parser.add_argument("--fp32", type=Path, help="fp32 ONNX model (default: made in --cache)")
    parser.add_argument("--precisions", default="int8,fp32")
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "skutag-ray-bench")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    precisions = args.precisions.split(",")
    pipelines = args.pipelines.split(",")
    models = {p: getattr(args, p) or resnet50(args.cache, p) for p in precisions}
    files = [p for folder in ("catalog-photos", "clothing") for p in photos(args.data / folder)]
    manifest = repeated_manifest(files, args.images, args.cache / f"photos-{args.images}.csv")
    part = min(len(files), 500)  # every unit's images distinct: every row is decoded
    load = [load_average()]
    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.rounds):
        for precision in precisions:
            for pipeline in pipelines:
                result = run_one(pipeline, models[precision], manifest, part, args)
                results.setdefault((precision, pipeline), []).append(result)
                print(f"{precision} {pipeline}: {describe(result)}", file=sys.stderr, flush=True)
    load.append(load_average())
    print(report(results, models, args, len(files), part, load))


def resnet50(cache: Path, precision: str) -> Path:
    """`skutag demo`'s recipe, smaller: synth 240 photos, train the head 10 epochs, export."""
    model = cache / f"resnet50-{precision}.onnx"
    if model.exists():
        return model
    steps = []
    if not (cache / "run" / "best.safetensors").exists():
        steps += [
            ["synth", cache / "train", "--n", "240", "--classes", "6", "--size", "256-512", "--seed", "0"],
            ["train", cache / "train", "--out", cache / "run", "--arch", "resnet50", "--weights", "none",
             "--freeze", "backbone", "--cache-features", "--adapt-bn", "--augment", "none", "--epochs", "10",
             "--lr", "1e-2", "--batch-size", "32", "--image-size", "224", "--val-split", "0.2", "--seed", "0"],
        ]  # fmt: skip
    # A random backbone: int8 parity with PyTorch is not what this model is for (speed is), so no gate.
    calib = ["--calib", cache / "train", "--no-check"] if precision == "int8" else []
    steps.append(["export", cache / "run", "--out", model, "--precision", precision, *calib])
    for step in steps:
        subprocess.run(skutag_command(*step), check=True)
    return model


def run_one(pipeline: str, model: Path, manifest: Path, part: int, args) -> dict:
    """One whole process of `pipeline` over the manifest: wall, steady-state rate and start-up."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(dir=args.cache) as out:
        if pipeline == "canonical":
            command = [sys.executable, "-m", "benchmarks.ray_canonical", str(model), str(manifest), out,
                       "--batch-size", str(args.batch_size)]  # fmt: skip
        else:
            command = skutag_command("run", model, manifest, "--out", out, "--engine", pipeline,
                                     "--batch-size", args.batch_size, "--part-size", part,
                                     "--max-error-rate", "1", "--no-progress")  # fmt: skip
        started_at = time.time()
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"{pipeline} failed ({result.returncode}): {result.stderr[-3000:]}")
        table = pq.read_table(out, columns=["predicted_at"])
        inner = None
        if pipeline != "canonical":
            summary = json.loads((Path(out) / "_summary.json").read_text())
            if summary["decoded"] != args.images or summary["ok"] != args.images:
                raise SystemExit(
                    f"{pipeline}: {summary['ok']} ok, {summary['decoded']} decoded of {args.images}"
                )
            inner = summary["wall_s"]
    if table.num_rows != args.images:
        raise SystemExit(f"{pipeline}: {table.num_rows} rows, expected {args.images}")
    column = table.column("predicted_at").to_pylist()
    stamps = sorted(v.timestamp() if hasattr(v, "timestamp") else float(v) for v in column)
    # Between the rows at 10% and 90%: blocks that reach the driver in bursts (the first ones, while
    # the consumer starts; the last ones) and the pipeline's fill and drain are left out.
    low, high = len(stamps) // 10, len(stamps) * 9 // 10
    steady = (high - low) / max(stamps[high] - stamps[low], 1e-9)
    startup = (stamps[low] - started_at) - low / steady
    return {"wall": wall, "inner": inner, "steady": steady, "startup": startup}


def describe(result: dict) -> str:
    return (
        f"{result['steady']:.1f} images/s steady, start-up {result['startup']:.1f} s, "
        f"whole process {result['wall']:.1f} s"
    )


def report(results, models, args, photos: int, part: int, load) -> str:
    lines = [
        header("onnxruntime", "onnxruntime-gpu", "ray", before=load[0]),
        f"Models: {', '.join(f'{k}: {v.name}' for k, v in models.items())}; {args.images} rows over {photos} "
        f"real photos (CSV manifest, part size {part}), --batch-size {args.batch_size}, each engine's defaults.",
        "",
        "| model | pipeline | steady images/s (per round) | median | x local | start-up s | whole process s |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for precision in models:
        local = results.get((precision, "local"))
        base = statistics.median(r["steady"] for r in local) if local else None
        for pipeline in PIPELINES:
            runs = results.get((precision, pipeline))
            if not runs:
                continue
            median = statistics.median(r["steady"] for r in runs)
            ratio = f"{median / base:.2f}" if base else "-"
            lines.append(
                f"| {precision} | {pipeline} | {_each(runs, 'steady')} | {median:.1f} | {ratio} | "
                f"{_each(runs, 'startup')} | {_each(runs, 'wall')} |"
            )
    ratios = []
    for precision in models:
        for number in range(args.rounds):
            try:
                ray_run = results[(precision, "ray")][number]["steady"]
                local = results[(precision, "local")][number]["steady"]
                canonical = results[(precision, "canonical")][number]["steady"]
            except (KeyError, IndexError):
                continue
            ratios.append(f"{precision} round {number + 1}: ray/local {ray_run / local:.2f}, "
                          f"ray/canonical {ray_run / canonical:.2f}")  # fmt: skip
    if ratios:
        lines += ["", "Per-round ratios (steady state, same round): " + "; ".join(ratios) + "."]
    return "\n".join(lines)


def _each(runs: list[dict], key: str) -> str:
    return ", ".join(f"{run[key]:.1f}" for run in runs)


if __name__ == "__main__":
    main()
