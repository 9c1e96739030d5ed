"""`skutag bench`: the command around skutag.bench.run (heavy imports inside the command)."""

from __future__ import annotations

import click

from skutag.options import ORT_DEVICES, workers_option


def _batch_sizes(ctx, param, value: str) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, e.g. 1,8,32") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter("batch sizes must be positive")
    return sizes


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Directory for results.json/.md and plots."
)
@click.option(
    "--batch-sizes",
    default="1,8,32",
    show_default=True,
    callback=_batch_sizes,
    help="Comma-separated batch sizes.",
)
@click.option(
    "--device",
    "devices",
    multiple=True,
    type=click.Choice(ORT_DEVICES),
    default=("auto",),
    show_default=True,
    help="Device(s) to measure on; repeat for several.",
)
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False),
    help="Also measure the end-to-end `skutag run` pipeline on these images.",
)
@click.option(
    "--data", type=click.Path(exists=True), help="Labelled images (ImageFolder): add top-1 accuracy."
)
@click.option("--baseline", type=click.Choice(["torch"]), help="Add the eager PyTorch model (needs --run).")
@click.option(
    "--run", "run_dir", type=click.Path(exists=True), help="The trained run dir for --baseline torch."
)
@click.option(
    "--min-seconds",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Minimum timed seconds per measurement (after warm-up).",
)
@click.option("--warmup", type=click.IntRange(min=1), default=3, show_default=True, help="Warm-up calls.")
@workers_option
def bench(
    models, out, batch_sizes, devices, images, data, baseline, run_dir, min_seconds, warmup, workers
) -> None:
    """Latency (p50/p90/p99) and throughput of MODELS (ONNX, .pte, .tflite, OpenVINO .xml), side by side.

    Model-only figures use fixed shapes, warm-up and many repetitions; --images adds
    the real pipeline's end-to-end images/s and its ratio to model-only.
    """
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from skutag.bench.report import COLUMNS, table_rows, write_results
    from skutag.bench.run import BenchConfig, run_bench

    if baseline and not run_dir:
        raise click.UsageError("--baseline torch needs --run RUN (the trained run dir)")
    console = Console(stderr=True)
    config = BenchConfig(
        models=[Path(m) for m in models],
        out=Path(out),
        batch_sizes=batch_sizes,
        devices=list(dict.fromkeys(devices)),
        images=Path(images) if images else None,
        data=Path(data) if data else None,
        baseline_run=Path(run_dir) if run_dir else None,
        workers=workers,
        min_seconds=min_seconds,
        warmup=warmup,
    )
    with console.status("benchmarking") as status:
        rows = run_bench(config, progress=lambda text: status.update(f"benchmarking: {text}"))
    written = write_results(Path(out), rows)
    table = Table(*COLUMNS, title="skutag bench")
    for cells in table_rows(rows):
        table.add_row(*cells)
    terminal = Console()
    if not terminal.is_terminal:
        terminal = Console(width=160)
    terminal.print(table)
    console.print("wrote " + ", ".join(str(p) for p in written))
