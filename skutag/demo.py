"""`skutag demo`: the whole pipeline end to end on a synthetic catalog, offline, on a laptop CPU.

synth -> train ResNet-50 briefly -> export fp32 and calibrated int8 -> batchrun over a
larger catalog (with a few broken files, which become `error` rows) -> a small benchmark
-> a summary table. Every step is the real CLI command a user would type, printed
before it runs, so the demo doubles as a tutorial.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

import click

# Small enough for ~5 minutes on 2 CPU cores, large enough to show real behaviour.
TRAIN_IMAGES, CLASSES, CATALOG_IMAGES = 480, 6, 1000
IMAGE_SIZE, EPOCHS = 224, 30  # ResNet-50's own resolution: int8 of a smaller one fails its parity gate
STEPS = ("catalog", "run", "models", "predictions", "bench")


@click.command()
@click.option(
    "--out",
    default="demo-out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the demo writes everything (its own subfolders are replaced on rerun).",
)
@click.option("--epochs", type=click.IntRange(min=1), default=EPOCHS, show_default=True)
@click.option(
    "--catalog-size",
    type=click.IntRange(min=10),
    default=CATALOG_IMAGES,
    show_default=True,
    help="Images in the catalog that batchrun tags.",
)
def demo(out: str, epochs: int, catalog_size: int) -> None:
    """Run synth, train, export (fp32, int8), run and bench end to end on a synthetic catalog."""
    from rich.console import Console

    console = Console()
    root = Path(out)
    for step in STEPS:
        shutil.rmtree(root / step, ignore_errors=True)
    started = time.perf_counter()
    train_data, catalog = root / "catalog" / "train", root / "catalog" / "shop"
    run, models, predictions = root / "run", root / "models", root / "predictions"
    fp32, int8 = models / "resnet50-fp32.onnx", models / "resnet50-int8.onnx"

    _step(
        console,
        "1/6 a labelled synthetic catalog to learn from",
        ["synth", train_data, "--n", TRAIN_IMAGES, "--classes", CLASSES, "--size", "256-512", "--seed", 0],
    )
    # Transfer learning's default: frozen backbone, new classifier, features computed once and cached.
    # Offline the backbone is randomly initialised (--weights none), so its BatchNorm statistics are
    # recomputed on the catalog first (--adapt-bn); with network, use --weights imagenet.
    _step(
        console,
        "2/6 fine-tune ResNet-50's classifier on cached backbone features",
        [
            "train",
            train_data,
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
            "--epochs",
            epochs,
            "--lr",
            "1e-2",
            "--batch-size",
            32,
            "--image-size",
            IMAGE_SIZE,
            "--val-split",
            "0.2",
            "--seed",
            0,
        ],
    )
    _step(
        console, "3/6 export fp32 ONNX (card inside, checked against PyTorch)", ["export", run, "--out", fp32]
    )
    _step(
        console,
        "4/6 export int8 ONNX, calibrated on real catalog images (parity checked on 200 of them)",
        ["export", run, "--out", int8, "--precision", "int8", "--calib", train_data, "--check-size", 200],
    )
    _step(
        console,
        f"5/6 tag a catalog of {catalog_size} photos (plus 3 broken files) into Parquet",
        ["synth", catalog, "--n", catalog_size, "--classes", CLASSES, "--seed", 1],
        quiet=True,
    )
    _add_broken_files(catalog)
    _step(console, None, ["run", int8, catalog, "--out", predictions, "--max-error-rate", "0.05"])
    _step(
        console,
        "6/6 benchmark fp32 vs int8 (model only and end to end)",
        [
            "bench",
            fp32,
            int8,
            "--out",
            root / "bench",
            "--batch-sizes",
            "1,16",
            "--device",
            "cpu",
            "--min-seconds",
            "1",
            "--images",
            train_data,
        ],
    )
    _summary(console, root, run, fp32, int8, predictions, time.perf_counter() - started)


def _part_columns(out: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_schema(next(out.glob("part-*.parquet"))).names


def _step(console, title: str | None, args: list, quiet: bool = False) -> None:
    from skutag.cli import cli

    args = [str(a) for a in args]
    if title:
        console.rule(f"[bold]{title}")
    console.print(f"[dim]$ skutag {shlex.join(args)}[/dim]")
    cli.main(args=args, prog_name="skutag", standalone_mode=False)


def _add_broken_files(catalog: Path) -> None:
    """What real catalogs contain: an empty upload, a text file named .jpg, a cut-off transfer."""
    good = next(catalog.rglob("*.jpg")).read_bytes()
    broken = catalog / "incoming"
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "empty-upload.jpg").write_bytes(b"")
    (broken / "price-list.jpg").write_text("SKU,price\n1234,9.99\n")
    (broken / "cut-off-transfer.jpg").write_bytes(good[: len(good) // 3])


def _summary(
    console, root: Path, run: Path, fp32: Path, int8: Path, predictions: Path, seconds: float
) -> None:
    from rich.table import Table

    metrics = json.loads((run / "metrics.json").read_text())
    summary = json.loads((predictions / "_summary.json").read_text())
    bench = json.loads((root / "bench" / "results.json").read_text())["results"]
    table = Table(title=f"skutag demo: done in {seconds / 60:.1f} min", show_header=False)
    table.add_row("validation accuracy (ResNet-50)", f"{metrics['accuracy']:.3f}")
    for row in bench:
        e2e = (
            f", end to end {row['end_to_end_images_per_s']:.1f}" if row.get("end_to_end_images_per_s") else ""
        )
        table.add_row(
            f"{row['artifact']} batch {row['batch_size']}",
            f"{row['images_per_s']:.1f} images/s model only{e2e} ({row['size_mb']:.0f} MB)",
        )
    errors = ", ".join(f"{kind} {n}" for kind, n in summary["errors_by_kind"].items()) or "none"
    table.add_row(
        "catalog tagged",
        f"{summary['ok']} ok rows, {summary['errors']} error rows ({errors}), "
        f"{summary['images_per_s']:.1f} images/s end to end",
    )
    table.add_row("predictions (Parquet)", f"{predictions}/*.parquet")
    table.add_row(
        "training report and plots", f"{run}/report/ (Grad-CAM of the mistakes: misclassified-gradcam.png)"
    )
    table.add_row("models", f"{fp32}, {int8}")
    table.add_row("benchmark table and plots", f"{root / 'bench'}/results.md, *.png")
    console.print(table)
    console.print(
        f"Read the predictions: duckdb -c \"SELECT label, count(*) FROM '{predictions}/*.parquet' "
        'GROUP BY label"'
    )
    if "review" in _part_columns(predictions):
        console.print(
            f"The review queue: duckdb -c \"SELECT id, label, score, review_reason FROM '{predictions}/*.parquet' "
            'WHERE review"'
        )
