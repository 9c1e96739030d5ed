"""`skutag run MODEL.onnx SOURCE... --out OUT`: the command around `batchrun.api.run_catalog`.

Imports only click, skutag.options and the stdlib at module level, so `--help` stays fast;
everything heavy is imported when the command runs. Exit codes (DESIGN.md): 0 done (or
already complete), 2 bad input paths or options, 3 every row written but more inputs failed
than --max-error-rate allows, 1 anything else (a device that is not usable, ...).
"""

from __future__ import annotations

import click

from skutag.options import ORT_DEVICES, batch_size_option, device_option, out_option, workers_option


def _floats3(ctx, param, value: str | None):
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != 3:
        raise click.BadParameter("expected three comma-separated numbers, e.g. 0.485,0.456,0.406")
    return numbers


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("sources", nargs=-1, required=True)
@out_option("Output directory for the Parquet parts, _manifest.json, summary.json and _SUCCESS.")
@batch_size_option(32)
@workers_option
@click.option("--prefetch", type=click.IntRange(min=1), default=None, help="Batches each worker keeps ready.")
@device_option(ORT_DEVICES)
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads on the CPU."
)
@click.option(
    "--topk", type=click.IntRange(min=1), default=5, show_default=True, help="Labels kept per image."
)
@click.option("--embeddings", is_flag=True, help="Add the model's `embedding` output as a column.")
@click.option(
    "--shard",
    default="0/1",
    show_default=True,
    help="Process slice I of N (zero-based) of the sorted inputs; N shards may share one --out.",
)
@click.option(
    "--max-error-rate",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="Above this fraction of failed inputs the run still writes every row but exits 3.",
)
@click.option(
    "--part-size",
    type=click.IntRange(min=1),
    default=50_000,
    show_default=True,
    help="Rows per Parquet part (a crash redoes at most one part).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing, different or complete run in --out.")
@click.option(
    "--trt-cache",
    type=click.Path(file_okay=False),
    default=None,
    help="TensorRT engine and timing cache directory (default ~/.cache/skutag/tensorrt).",
)
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Models without a skutag card: class names, one per line, in output order.",
)
@click.option(
    "--image-size", type=click.IntRange(min=1), default=None, help="Models without a card: crop size."
)
@click.option(
    "--resize-size",
    type=click.IntRange(min=1),
    default=None,
    help="Models without a card: shorter side before the crop.",
)
@click.option("--mean", callback=_floats3, default=None, help="Models without a card: RGB mean in [0, 1].")
@click.option("--std", callback=_floats3, default=None, help="Models without a card: RGB std in [0, 1].")
@click.option(
    "--interpolation",
    type=click.Choice(["nearest", "bilinear", "bicubic", "lanczos"]),
    default=None,
    help="Models without a card: resize filter (default bilinear).",
)
@click.option("--softmax", is_flag=True, help="Models without a card whose output is logits: apply softmax.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress on stderr.")
def run(model, sources, out, batch_size, workers, prefetch, device, threads, topk, embeddings, shard,
        max_error_rate, part_size, overwrite, trt_cache, labels, image_size, resize_size, mean, std,
        interpolation, softmax, progress) -> None:  # fmt: skip
    """Predict every image of SOURCE... with MODEL.onnx into Parquet under --out.

    \b
    SOURCE: a directory (recursive), an image, a glob (quoted), a text file of paths,
    or a CSV/Parquet manifest with `path` or `uri` (and optionally `id`) columns.
    Rerunning the same command resumes after a crash; shards: --shard I/N.
    """
    from pathlib import Path

    from batchrun.api import run_catalog
    from batchrun.model import ForeignPreprocessing
    from skutag.errors import TooManyErrors

    foreign = ForeignPreprocessing(
        labels=Path(labels) if labels else None,
        image_size=image_size,
        resize_size=resize_size,
        mean=mean,
        std=std,
        interpolation=interpolation,
        softmax=softmax,
    )
    summary = run_catalog(
        model,
        list(sources),
        out,
        batch_size=batch_size,
        workers=workers,
        prefetch=prefetch,
        device=device,
        threads=threads,
        topk=topk,
        embeddings=embeddings,
        shard=shard,
        max_error_rate=max_error_rate,
        part_rows=part_size,
        overwrite=overwrite,
        trt_cache=trt_cache,
        foreign=foreign,
        progress=progress,
    )
    if summary.already_complete:
        click.echo(f"{out} is already complete ({summary.rows} rows); pass --overwrite to redo it", err=True)
    else:
        kinds = ", ".join(f"{k} {n}" for k, n in summary.errors_by_kind.items())
        click.echo(
            f"{summary.rows} rows ({summary.ok} ok, {summary.errors} errors{': ' + kinds if kinds else ''}; "
            f"{summary.skipped} skipped, {summary.duplicates} duplicates) in {summary.wall_s:.1f} s, "
            f"{summary.images_per_s:.1f} images/s on {summary.device} -> {out}",
            err=True,
        )
    if summary.exceeded_error_rate:
        raise TooManyErrors(
            f"{summary.errors} of {summary.rows} inputs failed ({summary.error_rate:.1%} > --max-error-rate "
            f"{summary.max_error_rate:.1%}); every row is written to {out}"
        )
