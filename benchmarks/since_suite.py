"""The nightly job: a `skutag run --since` night against the full run, on real photos and at catalog scale.

`photos`: a catalog of `--count` real photos (../shared/data, copied and repeated to reach the
count) is tagged in full (night 1); `--changed` of the files are rewritten with other photos'
bytes (new size and mtime); then `skutag run ... --since night1` (night 2) is timed and, for
reference, a full run of the changed catalog. Whole processes (`python -m skutag run`), so
start-up, planning and the copy of reused rows count.

    python -m benchmarks.since_suite photos --model MODEL.onnx [--count 2000] [--changed 0.01]

`scale`: a plan of `--count` inputs (1,000,000) of which `--changed` (1%) changed. The catalog is a
Parquet manifest (id, path, version), as a catalog export would give. Night 1 is a real `skutag run`
of the whole manifest: its rows name `--distinct` tiny images (ids that share an image share one
decode per unit), so the previous OUT is written by the real plan, decode, predict and writer path
in minutes instead of decoding a million photos. Night 2 changes `--changed` of the rows to new
versions and new tiny images (one each), then runs `skutag plan` and `skutag run --since night1` in
fresh processes: their wall time and peak RSS (the main process's VmHWM and RssAnon, sampled from
/proc) are the figures. Then, in this process, the phases of night 2 are timed one by one on a
scratch copy (the `--since` matching of every unit, the count of removed inputs) next to the run's
own decode / inference / write times, so the table says where the time goes. Without `--model`, a
resnet18 at 32 px (random weights) is exported first.

    python -m benchmarks.since_suite scale --count 1000000 [--changed 0.01] [--model MODEL.onnx] [--scratch DIR]

`publish`: the Delta merge of `skutag publish` (`batchrun.publish.delta.merge`, the same predicate,
clauses and layout) at scale: a table of `--count` rows (1,000,000) in the OUT's columns, made by one
full merge into an empty table; then a night where `--changed` (1%) of the ids, drawn at random, were
predicted again and `--removed` (0.1%) left the plan, merged incrementally in a fresh process:
its merge time, the files it rewrote out of the table's files, and its peak RSS (VmHWM).

    python -m benchmarks.since_suite publish [--count 1000000] [--changed 0.01] [--removed 0.001]

`report`: `skutag report night2 --since night1` over two OUTs of `--count` rows (1,000,000) of which
`--changed` (1%) changed label and image: its wall time and peak RSS in a fresh process. The two
OUTs are written directly in the committed layout (parts of 10,000 rows in the real schema, with
review columns, top-5 and 0.1% error rows; the commit log; `_SUCCESS`), not by `skutag run`: the
report reads only committed rows, and this way the OUTs take seconds to make. Their rows name
`--distinct` tiny images, so the thumbnails are real.

    python -m benchmarks.since_suite report --count 1000000 [--changed 0.01] [--scratch DIR]

Every mode prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import (
    DATA,
    header,
    load_average,
    measure,
    photos,
    random_onnx,
    repeated_copies,
    skutag_command,
)

# -- photos: 2,000 real photos, 1% changed ---------------------------------------------------------


def timed_run(model: Path, catalog: Path, out: Path, *extra: str) -> tuple[float, dict]:
    command = skutag_command(
        "run", model, catalog, "--out", out, "--no-progress", "--max-error-rate", "1", *extra
    )
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - started
    return wall, json.loads((out / "_summary.json").read_text())


def photo_night(args: argparse.Namespace) -> None:
    files = photos(args.photos)
    print(header("onnxruntime", "onnxruntime-gpu", "pillow") + "\n")
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        catalog = Path(scratch, "catalog")
        copies = repeated_copies(files, args.count, catalog)
        full_s, full = timed_run(args.model, catalog, Path(scratch, "night1"))
        rng = random.Random(0)
        changed = rng.sample(copies, max(1, round(args.count * args.changed)))
        for path in changed:
            path.write_bytes(rng.choice(files).read_bytes() + b"\0")  # other bytes, other size
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


# -- scale: a Parquet plan of 1,000,000 inputs, 1% changed ----------------------------------------


SIZE = (32, 48)  # tiny images: decode is not what `scale` measures
TINY_CLASSES = ("boot", "cup", "lamp", "sock")


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
    """Run `python -m skutag ARGS` to completion: (wall s, peak RSS MiB, peak anonymous MiB) of its main
    process (`benchmarks.common.measure`). RSS counts the shared libraries' pages it touched (importing
    torch alone shows ~750 MiB, ~415 MiB of it file pages); RssAnon is the memory the run itself allocated."""
    done = measure(skutag_command(*args))
    if done.returncode != 0:
        raise SystemExit(f"skutag {' '.join(map(str, args))} failed:\n{done.stderr[-2000:]}")
    return done.wall_s, int(done.peak_rss_mib), int(done.peak_anon_mib)


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


def scale(args: argparse.Namespace) -> None:
    load = load_average()
    with tempfile.TemporaryDirectory(dir=args.scratch, prefix="since-scale-") as tmp:
        scratch = Path(tmp)
        model = args.model or random_onnx(scratch / "tiny.onnx", "resnet18", TINY_CLASSES, image_size=32)
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
    print(header("onnxruntime", "pyarrow", before=load))
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


# -- publish: the Delta merge of a night into a 1,000,000-row table -----------------------------------


def out_rows(ids: list[str], seed: int, predicted_at: int) -> pa.Table:
    """Synthetic rows in the OUT's columns (docs/design.md), one per id, as `skutag run` writes them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n, k = len(ids), 5
    labels = pa.array([f"class-{i}" for i in range(20)])
    top = rng.integers(0, 20, (n, k)).astype(np.int32)
    scores = np.sort(rng.random((n, k), np.float32), axis=1)[:, ::-1].copy()
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    return pa.table({
        "id": ids,
        "uri": [f"s3://shop-images/catalog/{i}" for i in ids],
        "version": pa.array(rng.integers(1, 1 << 40, n).astype(str)),
        "status": pa.array(["ok"] * n),
        "error_kind": pa.nulls(n, pa.string()),
        "error": pa.nulls(n, pa.string()),
        "label": labels.take(pa.array(top[:, 0])),
        "label_index": pa.array(top[:, 0]),
        "score": pa.array(scores[:, 0]),
        "topk_labels": pa.ListArray.from_arrays(offsets, labels.take(pa.array(top.reshape(-1)))),
        "topk_indices": pa.ListArray.from_arrays(offsets, pa.array(top.reshape(-1))),
        "topk_scores": pa.ListArray.from_arrays(offsets, pa.array(scores.reshape(-1))),
        "width": pa.array(rng.integers(400, 1600, n).astype(np.int32)),
        "height": pa.array(rng.integers(400, 1600, n).astype(np.int32)),
        "bytes": pa.array(rng.integers(50_000, 2_000_000, n)),
        "sha256": pa.array([f"{v:064x}" for v in rng.integers(0, 1 << 62, n)]),
        "predicted_at": pa.array(np.full(n, predicted_at, np.int64), pa.timestamp("us", tz="UTC")),
    })  # fmt: skip


def publish_merge(args: argparse.Namespace) -> None:
    """The night's merge alone, in this (fresh) process: prints one JSON line of its figures."""
    from deltalake import CommitProperties, DeltaTable
    from skutag.batchrun.publish.delta import merge, removed_rows, table_rows

    night = pq.read_table(args.rows)
    removed = pq.read_table(args.removed).column("id").to_pylist()
    dt = DeltaTable(args.table)
    files_before = len(dt.file_uris())
    started = time.perf_counter()
    source = table_rows(night)
    source = pa.concat_tables([source, removed_rows(removed, source.schema)])
    metrics = merge(dt, source, CommitProperties(), removed_at=None, full=False)
    elapsed = time.perf_counter() - started
    hwm = next(
        line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM")
    )
    print(json.dumps({"merge_s": elapsed, "files_before": files_before, "metrics": metrics,
                      "vmhwm_kib": int(hwm.split()[1])}))  # fmt: skip


def publish(args: argparse.Namespace) -> None:
    from deltalake import CommitProperties, DeltaTable
    from skutag.batchrun.publish.delta import BUCKET, merge, table_rows

    before = load_average()
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        scratch = Path(scratch)
        ids = [f"catalog/{i % 997:03d}/{i:08d}.jpg" for i in range(args.count)]
        started = time.perf_counter()
        first = table_rows(out_rows(ids, seed=1, predicted_at=1_700_000_000_000_000))
        table = str(scratch / "tags")
        DeltaTable.create(table, first.schema, partition_by=[BUCKET])
        merge(DeltaTable(table), first, CommitProperties(), removed_at=None, full=True)
        load_s = time.perf_counter() - started
        del first
        rng = random.Random(7)
        picked = rng.sample(range(args.count), int(args.count * (args.changed + args.removed)))
        changed = sorted(picked[: int(args.count * args.changed)])
        removed = sorted(picked[len(changed) :])
        pq.write_table(
            out_rows([ids[i] for i in changed], 2, 1_700_086_400_000_000), scratch / "night.parquet"
        )
        pq.write_table(pa.table({"id": [ids[i] for i in removed]}), scratch / "removed.parquet")
        child = subprocess.run(
            [sys.executable, "-m", "benchmarks.since_suite", "publish-merge", "--table", table,
             "--rows", str(scratch / "night.parquet"), "--removed", str(scratch / "removed.parquet")],
            capture_output=True, text=True,
        )  # fmt: skip
        if child.returncode:
            raise SystemExit(f"the night's merge failed:\n{child.stderr}")
        figures = json.loads(child.stdout.strip().splitlines()[-1])
        rows = DeltaTable(table).count()
    m = figures["metrics"]
    print(header("deltalake", before=before))
    print(f"\n{args.count:,} rows; a night of {len(changed):,} changed and {len(removed):,} removed ids "
          "(drawn at random), merged incrementally\n")  # fmt: skip
    print("| figure | value |\n|---|---|")
    print(f"| initial load (full merge into an empty table, this process) | {load_s:.1f} s |")
    print(f"| table files before the night | {figures['files_before']} |")
    print(f"| night merge: wall time (fresh process) | {figures['merge_s']:.1f} s |")
    print(f"| files rewritten / table files | {m['num_target_files_removed']} / {figures['files_before']} "
          f"({m['num_target_files_removed'] / figures['files_before']:.0%}) |")  # fmt: skip
    print(f"| rows updated / deleted / copied | {m['num_target_rows_updated']:,} / "
          f"{m['num_target_rows_deleted']:,} / {m['num_target_rows_copied']:,} |")  # fmt: skip
    print(f"| peak RSS of the night's process (VmHWM) | {figures['vmhwm_kib'] / 1024:.0f} MiB |")
    print(f"| rows after | {rows:,} |")


# -- report: `skutag report --since` over two committed OUTs of a million rows -------------------------

REPORT_CLASSES = tuple(f"class{n:02d}" for n in range(20))
PART_ROWS = 10_000


def committed_out(out: Path, count: int, images: list[str], changed: set[int] | None, seed: int) -> None:
    """An OUT of `count` rows in the committed layout (parts, commit log, _SUCCESS); `changed`: the rows
    whose label and image differ from the same call without it."""
    import numpy as np
    from skutag.batchrun.commit.out import CommitEntry, CommitLog, part_name
    from skutag.batchrun.commit.writer import prediction_schema

    from skutag.card import ModelCard

    k = len(REPORT_CLASSES)
    means = np.abs(np.random.default_rng(0).standard_normal((k, 8)))
    review = {"score": "1-max-cosine", "class_means": (means / np.linalg.norm(means, axis=1, keepdims=True)).tolist(),
              "ood_threshold": 0.3, "tpr": 0.95, "confidence_threshold": 0.3}  # fmt: skip
    card = ModelCard.for_training("resnet18", list(REPORT_CLASSES), image_size=32).replace(review=review)
    schema = prediction_schema(None, {"skutag.card": card.to_json(), "skutag.model_sha256": "0" * 64})
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    entries = []
    for unit, start in enumerate(range(0, count, PART_ROWS)):
        n = min(PART_ROWS, count - start)
        index = np.arange(start, start + n)
        label_index = (index * 7919 % 97) % k  # the same per row in both nights
        image = index % len(images)
        if changed:
            moved = np.fromiter((i in changed for i in index), bool, n)
            label_index = np.where(moved, (label_index + 1) % k, label_index)
            image = np.where(moved, (image + 1) % len(images), image)
        error = index % 1000 == 999
        ok = ~error
        scores = rng.uniform(0.2, 0.99, n).astype(np.float32)
        topk = np.stack([(label_index + j) % k for j in range(5)], axis=1).astype(np.int32)
        topk_scores = np.sort(rng.uniform(0, 1, (n, 5)).astype(np.float32), axis=1)[:, ::-1].copy()
        topk_scores[:, 0] = scores
        names = np.array(REPORT_CLASSES, dtype=object)
        flagged = scores < 0.25

        def nulls(values, mask=ok):
            return pa.array(values, mask=~mask)

        columns = {
            "id": pa.array([f"item/{i:07d}.jpg" for i in index]),
            "uri": pa.array([images[i] for i in image]),
            "version": pa.array([f"v{seed if changed and i in changed else 0}" for i in index]),
            "status": pa.array(np.where(ok, "ok", "error").tolist()),
            "error_kind": nulls(np.full(n, "corrupt", dtype=object), error),
            "error": nulls(np.full(n, "cannot identify image file", dtype=object), error),
            "label": nulls(names[label_index]),
            "label_index": nulls(label_index.astype(np.int32)),
            "score": nulls(scores),
            "topk_labels": pa.ListArray.from_arrays(pa.array(np.arange(0, 5 * n + 1, 5, dtype=np.int32)),
                                                    pa.array(names[topk].ravel()), mask=pa.array(error)),
            "topk_indices": pa.ListArray.from_arrays(pa.array(np.arange(0, 5 * n + 1, 5, dtype=np.int32)),
                                                     pa.array(topk.ravel()), mask=pa.array(error)),
            "topk_scores": pa.ListArray.from_arrays(pa.array(np.arange(0, 5 * n + 1, 5, dtype=np.int32)),
                                                    pa.array(topk_scores.ravel()), mask=pa.array(error)),
            "width": nulls(np.full(n, 64, np.int32)),
            "height": nulls(np.full(n, 64, np.int32)),
            "bytes": pa.array(np.full(n, 1000, np.int64)),
            "sha256": pa.array([f"{i:064x}" for i in image]),
            "predicted_at": pa.array(np.full(n, np.datetime64("2026-12-05T00:00:00", "us"))),
            "ood_score": nulls(rng.uniform(0, 0.5, n).astype(np.float32)),
            "review": nulls(flagged),
            "review_reason": nulls(np.where(flagged, "low_confidence", None), ok & flagged),
        }  # fmt: skip
        table = pa.table([columns[f.name] for f in schema], schema=schema)
        pq.write_table(table, out / part_name(unit), compression="zstd")
        counts = {"ok": int(ok.sum())} | ({"error:corrupt": int(error.sum())} if error.any() else {})
        entries.append(CommitEntry(unit, part_name(unit), n, counts, new=n, predicted=n))
    (out / "_commits.json").write_text(json.dumps(CommitLog({"bench": True}, entries).to_json()))
    summary = {"rows": count, "reused": count - len(changed or ()), "new": 0, "changed": len(changed or ()),
               "retried": 0, "removed": 0}  # fmt: skip
    (out / "_summary.json").write_text(json.dumps(summary))
    (out / "_SUCCESS").write_text("")


def report(args: argparse.Namespace) -> None:
    load = load_average()
    with tempfile.TemporaryDirectory(dir=args.scratch, prefix="since-report-") as tmp:
        scratch = Path(tmp)
        images = [str(scratch / name) for name in write_images(scratch / "images", args.distinct, seed=0)]
        n_changed = max(1, round(args.count * args.changed))
        changed = set(range(0, args.count, args.count // n_changed))
        started = time.perf_counter()
        committed_out(scratch / "night1", args.count, images, None, seed=1)
        committed_out(scratch / "night2", args.count, images, changed, seed=2)
        made_s = time.perf_counter() - started
        wall_s, rss, anon = skutag("report", scratch / "night2", "--since", scratch / "night1")
        made = json.loads((scratch / "night2" / "_report" / "report.json").read_text())
    moved = sum(pair["rows"] for pair in made["changes"])
    assert made["counts"]["rows"] == args.count and moved >= len(changed) * 0.99, (made["counts"], moved)
    print(header("pyarrow", "jinja2", before=load))
    print(f"Two OUTs of {args.count:,} rows (parts of {PART_ROWS:,}), {len(changed):,} changed "
          f"({args.changed:.1%}); made in {made_s:.0f} s (not timed below).\n")  # fmt: skip
    print(
        "| command | wall s | peak RSS MiB (main process) | peak RssAnon MiB | label changes | thumbnails |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| `skutag report night2 --since night1` | {wall_s:.1f} | {rss:,} | {anon:,} | {moved:,} | "
          f"{made['thumbs']['made']} |")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    nights = parser.add_subparsers(dest="night", required=True)
    real = nights.add_parser("photos", help="real photos copied to --count, --changed of them rewritten")
    real.add_argument("--model", required=True, type=Path)
    real.add_argument("--photos", type=Path, default=DATA)
    real.add_argument("--count", type=int, default=2000)
    real.add_argument("--changed", type=float, default=0.01)
    real.add_argument("--scratch", default=None)
    big = nights.add_parser("scale", help="a Parquet manifest of --count rows over tiny images")
    big.add_argument("--count", type=int, default=100_000)
    big.add_argument("--changed", type=float, default=0.01)
    big.add_argument("--distinct", type=int, default=50, help="tiny images night 1's rows share")
    big.add_argument("--model", type=Path, default=None)
    big.add_argument("--scratch", default=None)
    big.add_argument("--no-phases", action="store_true", help="skip the in-process phase timings")
    delta = nights.add_parser("publish", help="the Delta merge of a night into a --count-row table")
    delta.add_argument("--count", type=int, default=1_000_000)
    delta.add_argument("--changed", type=float, default=0.01)
    delta.add_argument("--removed", type=float, default=0.001)
    delta.add_argument("--scratch", default=None)
    child = nights.add_parser("publish-merge", help="(internal) the night's merge in a fresh process")
    for name in ("--table", "--rows", "--removed"):
        child.add_argument(name, required=True)
    pages = nights.add_parser("report", help="skutag report --since over two committed OUTs of --count rows")
    pages.add_argument("--count", type=int, default=1_000_000)
    pages.add_argument("--changed", type=float, default=0.01)
    pages.add_argument("--distinct", type=int, default=50, help="tiny images the rows name")
    pages.add_argument("--scratch", default=None)
    args = parser.parse_args(argv)
    modes = {"photos": photo_night, "scale": scale, "publish": publish, "publish-merge": publish_merge}
    modes["report"] = report
    modes[args.night](args)


if __name__ == "__main__":
    main()
