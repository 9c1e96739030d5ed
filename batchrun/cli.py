"""`skutag run MODEL.onnx SOURCE... --out OUT` and `skutag plan SOURCE... --out OUT`.

Imports only click, skutag.options and the stdlib at module level, so `--help` stays fast;
everything heavy is imported when the command runs. Exit codes (DESIGN.md): 0 done (or
already complete), 2 bad input paths or options, 3 every row written but more inputs failed
than --max-error-rate allows, 1 anything else (a device that is not usable, ...).
"""

from __future__ import annotations

import click

from batchrun.options import DEFAULT_DECODE_TIMEOUT_S, DEFAULT_MAX_BYTES, DEFAULT_PART_ROWS, ENGINES
from skutag.options import ORT_DEVICES, batch_size_option, device_option, workers_option


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


def _out_option(f):
    return click.option(
        "--out",
        required=True,
        help="Output folder or object-store prefix (s3://bucket/prefix, gs://...): _plan/, parts, "
        "_manifest.json, _summary.json, _SUCCESS.",
    )(f)


def _part_size_option(f):
    return click.option(
        "--part-size",
        type=click.IntRange(min=1),
        default=None,
        help=f"Rows per unit of the plan, and so per Parquet part (default {DEFAULT_PART_ROWS:,}; "
        "a crash redoes at most the units in progress). Fixed when the plan is made.",
    )(f)


def _storage_option(f):
    return click.option(
        "--storage-option",
        "storage_options",
        multiple=True,
        metavar="KEY=VALUE",
        help="fsspec option for object storage, repeatable (dotted keys nest: config_kwargs.read_timeout=10). "
        "Values are never written to OUT or printed.",
    )(f)


@click.command()
@click.argument("sources", nargs=-1, required=True)
@_out_option
@_part_size_option
@_storage_option
@click.option("--overwrite", is_flag=True, help="Plan again: remove the plan and every run in --out first.")
def plan(sources, out, part_size, storage_options, overwrite) -> None:
    """List SOURCE... once into OUT/_plan/: every shard, rerun and engine then reads that plan.

    \b
    `skutag run` plans by itself when OUT has no plan; `skutag plan` lets a scheduler plan
    once before it starts N shards. Sorted by id, deduplicated, streaming (bounded memory).
    """
    from batchrun.api import plan_catalog
    from skutag.storage import parse_options

    made = plan_catalog(
        list(sources),
        out,
        part_rows=part_size,
        overwrite=overwrite,
        storage_options=parse_options(storage_options),
    )
    skipped = ", ".join(f"{k} {n}" for k, n in made.listing.items() if n)
    click.echo(
        f"planned {made.total:,} inputs in {len(made.units)} units of up to {made.part_rows:,} "
        f"({made.duplicates} duplicates{'; skipped: ' + skipped if skipped else ''}"
        f"{f'; {made.labelled:,} with a manifest label' if made.labelled else ''}) -> {out}/_plan",
        err=True,
    )


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("sources", nargs=-1, required=True)
@_out_option
@batch_size_option(32)
@workers_option
@click.option("--prefetch", type=click.IntRange(min=1), default=None, help="Batches each worker keeps ready.")
@device_option(ORT_DEVICES)
@click.option(
    "--decode",
    type=click.Choice(["auto", "cpu", "gpu"]),
    default="auto",
    show_default=True,
    help="Where JPEGs are decoded, resized and cropped: gpu (nvJPEG through torchvision; other formats "
    "and files it refuses go through the CPU path), cpu, or auto (gpu when the run predicts on CUDA or "
    "TensorRT and torchvision can decode there). gpu when that is not possible fails in one line.",
)
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
    help="Process slice I of N (zero-based) of the plan's units; N shards may share one --out.",
)
@click.option(
    "--max-error-rate",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="Above this fraction of failed inputs the run still writes every row but exits 3.",
)
@_part_size_option
@click.option(
    "--since",
    default=None,
    help="An earlier OUT: copy its rows for inputs whose uri and version are unchanged (same model), "
    "predict only new and changed ones.",
)
@click.option(
    "--retry-errors",
    is_flag=True,
    help="Rerun: predict again committed error rows of retryable kinds (unreadable, timeout, crashed).",
)
@click.option(
    "--decode-timeout",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_DECODE_TIMEOUT_S,
    show_default=True,
    help="Seconds one input may take to read and decode; past it the worker is killed and the input "
    "is a `timeout` row.",
)
@click.option(
    "--max-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_BYTES,
    show_default=True,
    help="Larger files are `too_large` rows, judged from their size before any read.",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="local",
    show_default=True,
    help="local: DataLoader workers and one ONNX Runtime session; ray: Ray Data on a Ray cluster.",
)
@click.option(
    "--ray-address",
    default=None,
    help="--engine ray: a cluster address or `auto`; without it a local Ray is started and stopped.",
)
@_storage_option
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
def run(model, sources, out, batch_size, workers, prefetch, device, decode, threads, topk, embeddings, shard,
        max_error_rate, part_size, since, retry_errors, decode_timeout, max_bytes, engine, ray_address,
        storage_options, overwrite, trt_cache, labels, image_size, resize_size, mean, std, interpolation,
        softmax, progress) -> None:  # fmt: skip
    """Predict every image of SOURCE... with MODEL.onnx into Parquet under --out.

    \b
    SOURCE: a directory or object-store prefix (recursive), an image, a glob (quoted), a text
    file of paths or URLs, or a CSV/Parquet manifest with `path` or `uri` (and `id`) columns.
    The first run lists the sources into OUT/_plan/; shards and reruns read that plan.
    Rerunning the same command resumes after a crash; shards: --shard I/N.
    """
    from pathlib import Path

    from batchrun.api import run_catalog
    from batchrun.model import ForeignPreprocessing
    from batchrun.options import RunOptions
    from batchrun.shard import Shard
    from skutag.errors import TooManyErrors
    from skutag.storage import parse_options

    foreign = ForeignPreprocessing(
        labels=Path(labels) if labels else None,
        image_size=image_size,
        resize_size=resize_size,
        mean=mean,
        std=std,
        interpolation=interpolation,
        softmax=softmax,
    )
    options = RunOptions(
        batch_size=batch_size,
        workers=workers,
        prefetch=prefetch,
        device=device,
        decode=decode,
        threads=threads,
        topk=topk,
        embeddings=embeddings,
        shard=Shard.parse(shard),
        max_error_rate=max_error_rate,
        part_rows=part_size,
        overwrite=overwrite,
        trt_cache=trt_cache,
        progress=progress,
        decode_timeout_s=decode_timeout,
        max_bytes=max_bytes,
        since=since,
        retry_errors=retry_errors,
        engine=engine,
        ray_address=ray_address,
        storage_options=parse_options(storage_options),
    )
    summary = run_catalog(model, list(sources), out, options, foreign=foreign)
    if summary.already_complete:
        click.echo(f"{out} is already complete ({summary.rows} rows); pass --overwrite to redo it", err=True)
    else:
        click.echo(describe(summary), err=True)
    if summary.since_note:
        click.echo(summary.since_note, err=True)
    if summary.exceeded_error_rate:
        raise TooManyErrors(
            f"{summary.errors} of {summary.rows} inputs failed ({summary.error_rate:.1%} > --max-error-rate "
            f"{summary.max_error_rate:.1%}); every row is written to {out}"
        )


def describe(summary) -> str:
    """The one line `skutag run` prints when it is done."""
    kinds = ", ".join(f"{k} {n}" for k, n in summary.errors_by_kind.items())
    skipped = sum(summary.skipped.values())
    since = ""
    if summary.removed is not None:
        since = (
            f"; since: {summary.reused} reused, {summary.new} new, {summary.changed} changed, "
            f"{summary.retried} retried, {summary.removed} removed"
        )
    return (
        f"{summary.rows} rows ({summary.ok} ok, {summary.errors} errors{': ' + kinds if kinds else ''}; "
        f"{skipped} skipped, {summary.duplicates} duplicates{since}) in {summary.wall_s:.1f} s, "
        f"{summary.decoded} images decoded, {summary.images_per_s:.1f} images/s on {summary.device} -> {summary.out}"
    )
