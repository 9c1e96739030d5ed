"""A nightly `--since` at catalog scale: a plan of `--count` inputs (1,000,000) of which `--changed` (1%) changed.

    python -m benchmarks.since_scale --count 1000000 [--changed 0.01] [--model MODEL.onnx] [--scratch DIR]

The catalog is a Parquet manifest (id, path, version), as a catalog export would give. Night 1
is a real `skutag run` of the whole manifest: its rows name `--distinct` tiny images (ids that
share an image share one decode per unit), so the previous OUT is written by the real plan,
decode, predict and writer path in minutes instead of decoding a million photos. Night 2
changes `--changed` of the rows to new versions and new tiny images (one each), then runs
`skutag run --since night1` in a fresh process: its wall time and peak RSS (`wait4`'s
ru_maxrss, the largest process of the run) are the figures. Then, in this process, the phases
of night 2 are timed one by one on a scratch copy (plan, the `--since` matching of every unit,
the count of removed inputs) next to the run's own decode / inference / write times, so the
table says where the time goes. Without `--model`, a resnet18 at 32 px (random weights) is
exported first. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from skutag.bench.machine import machine_info, markdown_header

SIZE = (32, 48)  # tiny images: decode is not what this benchmark measures


def tiny_model(path: Path) -> Path:
    import torch
    from skutag.exporter.graph import export_fp32
    from skutag.trainer.model import build_model

    from skutag.card import ModelCard

    torch.manual_seed(0)
    card = ModelCard.for_training("resnet18", ["boot", "cup", "lamp", "sock"], image_size=32)
    export_fp32(build_model("resnet18", 4).eval(), card, path)
    return path


def write_images(folder: Path, count: int, seed: int) -> list[str]:
    from skutag.synth import SynthSpec, render_file

    spec = SynthSpec(count=count, classes=4, min_size=SIZE[0], max_size=SIZE[1], png_fraction=0.0, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"img-{seed}-{i:06d}.jpg"
        (folder / name).write_bytes(render_file(spec, i)[1])
        names.append(f"{folder.name}/{name}")
    return names


def write_manifest(path: Path, count: int, distinct: list[str], changed: dict[int, str]) -> None:
    """id, path, version for `count` rows, written in slices (memory stays small at 1M)."""
    writer = None
    step = 100_000
    for start in range(0, count, step):
        rows = range(start, min(count, start + step))
        paths = [changed.get(i) or distinct[i % len(distinct)] for i in rows]
        versions = [("v2-" if i in changed else "v1-") + str(i) for i in rows]
        table = pa.table({"id": [f"sku-{i:07d}" for i in rows], "path": paths, "version": versions})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def skutag(*args: object) -> tuple[float, int, int]:
    """Run `python -m skutag ARGS` to completion: (wall s, peak RSS MiB, peak anonymous MiB), both of
    its main process, sampled from /proc every 50 ms (VmHWM is that process's own high-water mark;
    `wait4`'s ru_maxrss would count the RSS of this process, which it was forked from). RSS counts
    the shared libraries' pages it touched (importing torch alone shows ~750 MiB, ~415 MiB of it
    file pages); RssAnon is the memory the run itself allocated."""
    command = [sys.executable, "-m", "skutag", *map(str, args)]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:  # a pipe could fill up and stall the run
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        peak = anon = 0
        while process.poll() is None:
            status = _status(process.pid)
            peak, anon = max(peak, status.get("VmHWM", 0)), max(anon, status.get("RssAnon", 0))
            time.sleep(0.05)
        wall = time.perf_counter() - started
        if process.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"{' '.join(command)} failed:\n{errors.read().decode()[-2000:]}")
    return wall, peak // 1024, anon // 1024


def _status(pid: int) -> dict[str, int]:
    found = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in ("VmHWM", "RssAnon"):
                    found[name] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return found


def phases(night2: Path, night1: Path) -> dict[str, float]:
    """Night 2's bookkeeping beyond the plan, phase by phase, in this process (nothing decoded)."""
    from skutag.batchrun.commit.reader import Previous
    from skutag.batchrun.plan.catalog import read_plan
    from skutag.batchrun.plan.incremental import removed_inputs
    from skutag.batchrun.plan.work import prepare_work

    plan = read_plan(str(night2))
    timings = {}
    started = time.perf_counter()
    previous = Previous(str(night1))
    prepare_work(plan, plan.units, previous)
    timings["--since matching of every unit (measured apart)"] = time.perf_counter() - started
    started = time.perf_counter()
    removed_inputs(previous.plan, plan)
    timings["removed inputs: merge of two plans (measured apart)"] = time.perf_counter() - started
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--distinct", type=int, default=50, help="tiny images night 1's rows share")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--scratch", default=None)
    parser.add_argument("--no-phases", action="store_true", help="skip the in-process phase timings")
    args = parser.parse_args()
    print(markdown_header(machine_info("onnxruntime", "pyarrow")) + "\n")
    with tempfile.TemporaryDirectory(dir=args.scratch, prefix="since-scale-") as tmp:
        scratch = Path(tmp)
        model = args.model or tiny_model(scratch / "tiny.onnx")
        distinct = write_images(scratch / "base", args.distinct, seed=0)
        n_changed = max(1, round(args.count * args.changed))
        step = args.count // n_changed
        fresh = write_images(scratch / "new", n_changed, seed=1)
        changed = {i * step: fresh[i] for i in range(n_changed)}
        write_manifest(scratch / "night1.parquet", args.count, distinct, {})
        write_manifest(scratch / "night2.parquet", args.count, distinct, changed)
        common = ("--no-progress", "--max-error-rate", "0", "--batch-size", "64")
        n1_s, n1_rss, n1_anon = skutag(
            "run", model, scratch / "night1.parquet", "--out", scratch / "night1", *common
        )
        plan_s, plan_rss, plan_anon = skutag("plan", scratch / "night2.parquet", "--out", scratch / "night2")
        n2_s, n2_rss, n2_anon = skutag(
            "run", model, scratch / "night2.parquet", "--out", scratch / "night2", "--since", scratch / "night1",
            *common,
        )  # fmt: skip
        summary = json.loads((scratch / "night2" / "_summary.json").read_text())
        timings = {} if args.no_phases else phases(scratch / "night2", scratch / "night1")
    assert summary["reused"] == args.count - n_changed and summary["changed"] == n_changed, summary
    print(f"Plan of {args.count:,} inputs, {n_changed:,} changed ({args.changed:.1%}); part rows: default.\n")
    print(
        "| night | wall s | peak RSS MiB (main process) | peak RssAnon MiB | rows | reused | changed | decoded |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| 1: full (rows share {args.distinct} images) | {n1_s:.1f} | {n1_rss:,} | {n1_anon:,} | "
        f"{args.count:,} | 0 | 0 | - |"
    )
    print(
        f"| 2a: `skutag plan` (the night's listing) | {plan_s:.1f} | {plan_rss:,} | {plan_anon:,} | - | - | - | - |"
    )
    print(
        f"| 2b: `skutag run --since night1` | {n2_s:.1f} | {n2_rss:,} | {n2_anon:,} | {summary['rows']:,} | "
        f"{summary['reused']:,} | {summary['changed']:,} | {summary['decoded']:,} |"
    )
    print(f"| 2: the night (2a + 2b) | {plan_s + n2_s:.1f} | {max(plan_rss, n2_rss):,} | "
          f"{max(plan_anon, n2_anon):,} | | | | |")  # fmt: skip
    print("\nWhere night 2's time goes (s; the run's stages overlap in its pipeline):\n")
    print("| phase | s |")
    print("|---|---:|")
    print(f"| 2a `skutag plan`, whole process (read the manifest, sort, write units) | {plan_s:.1f} |")
    print(f"| 2b start-up: imports, model, before `run_catalog` | {n2_s - summary['wall_s']:.1f} |")
    for name, seconds in timings.items():
        print(f"| 2b {name} | {seconds:.1f} |")
    for key in ("decode_s", "wait_s", "inference_s", "write_s", "wall_s"):
        print(f"| 2b run's own `{key}` | {summary[key]:.1f} |")


if __name__ == "__main__":
    main()
