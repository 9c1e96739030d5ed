"""`skutag run MODEL.onnx SOURCE... --out OUT` and `skutag plan SOURCE... --out OUT`.

Imports only click, batchrun.options (RunOptions: the options of `skutag run` are generated
from its fields' metadata) and the stdlib at module level, so `--help` stays fast;
everything heavy is imported when the command runs. Exit codes (docs/design.md, README): 0 done
(or already complete), 2 bad input paths or options, 3 every row written but more inputs
failed than --max-error-rate allows, 4 stopped on a systemic fault, 75 a transient fault
or a live lease on the shard (retry later), 1 anything else.
"""

from __future__ import annotations

import dataclasses

import click
from skutag.batchrun.options import DEFAULT_PART_ROWS, RunOptions


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
        "_commits.json (the commit log), _summary.json, _SUCCESS.",
    )(f)


def _part_rows_option(f):
    return click.option(
        "--part-rows",
        "--part-size",
        "part_rows",
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
@_part_rows_option
@_storage_option
@click.option("--overwrite", is_flag=True, help="Plan again: remove the plan and every run in --out first.")
def plan(sources, out, part_rows, storage_options, overwrite) -> None:
    """List SOURCE... once into OUT/_plan/: every shard, rerun and engine then reads that plan.

    \b
    `skutag run` plans by itself when OUT has no plan; `skutag plan` lets a scheduler plan
    once before it starts N shards. Sorted by id, deduplicated, streaming (bounded memory).
    """
    from skutag.batchrun.api import plan_catalog

    from skutag.storage import parse_options

    made = plan_catalog(
        list(sources),
        out,
        part_rows=part_rows,
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


def run_options(f):
    """The click options of every RunOptions field that has a `flag` (batchrun.options), in field order."""
    for spec in reversed([f for f in dataclasses.fields(RunOptions) if f.metadata.get("flag")]):
        f = _click_option(spec)(f)
    return f


def _click_option(spec):
    meta = spec.metadata
    cli = dict(meta["cli"])
    convert, secondary = cli.pop("convert", None), cli.pop("secondary", None)
    default = cli.pop("cli_default", None if spec.default is dataclasses.MISSING else spec.default)
    if "type" in cli:
        cli["type"] = cli["type"]()
    flags = meta["flag"].split(",")
    if secondary:
        flags = [f"{flags[0]}/{secondary}"]
    if convert is not None:
        cli["callback"] = lambda ctx, param, value: None if value is None else convert(value)
    shown = default not in (None, False) and not cli.get("multiple")
    return click.option(
        *flags, spec.name, default=default if not cli.get("multiple") else (), show_default=shown,
        help=meta["help"], **cli,
    )  # fmt: skip


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("sources", nargs=-1, required=True)
@_out_option
@run_options
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
@click.option(
    "--report",
    is_flag=True,
    help="When done, write OUT/_report/ (index.html, report.json: `skutag report OUT --since PREV`; "
    "needs the pages extra).",
)
def run(model, sources, out, labels, image_size, resize_size, mean, std, interpolation, softmax, report,
        **fields) -> None:  # fmt: skip
    """Predict every image of SOURCE... with MODEL.onnx into Parquet under --out.

    \b
    SOURCE: a directory or object-store prefix (recursive), an image, a glob (quoted), a text
    file of paths or URLs, or a CSV/Parquet manifest with `path` or `uri` (and `id`) columns.
    The first run lists the sources into OUT/_plan/; shards and reruns read that plan.
    Rerunning the same command resumes after a crash; shards: --shard I/N.
    Exit codes: 0 done or already complete, 2 bad usage or input, 3 more failed inputs than
    --max-error-rate, 4 stopped on a systemic fault (access, bucket, model), 75 retry later
    (a live process holds the shard, or the store stayed unavailable), 1 a bug.
    """
    from pathlib import Path

    from skutag.batchrun.api import run_catalog
    from skutag.batchrun.predict.model import ForeignPreprocessing

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
    options = RunOptions(**fields)
    summary = None
    try:
        summary = run_catalog(model, list(sources), out, options, foreign=foreign)
    except BaseException as exc:
        if options.metrics_file:
            from skutag.batchrun.metrics import write_metrics

            write_metrics(options.metrics_file, None, out, options, failure=exc)
        raise
    if options.metrics_file:
        from skutag.batchrun.metrics import write_metrics

        write_metrics(options.metrics_file, summary, out, options)
    if summary.already_complete:
        click.echo(f"{out} is already complete ({summary.rows} rows); pass --overwrite to redo it", err=True)
    else:
        click.echo(describe(summary), err=True)
    if summary.since_note:
        click.echo(summary.since_note, err=True)
    if options.table and summary.exceeded_error_rate:
        click.echo(
            f"--table {options.table}: not published, more inputs failed than --max-error-rate", err=True
        )
    elif options.table:
        _publish(out, options)
    if report and (summary.complete or summary.already_complete):
        from skutag.pages.cli import report_line
        from skutag.pages.render import write_report

        from skutag.storage import join

        made = write_report(out, options.since, options.storage_options)
        click.echo(report_line(made, join(out, "_report", "index.html")), err=True)
    elif report:
        click.echo(f"no report: {out} is not complete (another shard is still running)", err=True)
    if summary.exceeded_error_rate:
        raise TooManyErrors(
            f"{summary.errors} of {summary.rows} inputs failed ({summary.error_rate:.1%} > --max-error-rate "
            f"{summary.max_error_rate:.1%}); every row is written to {out}"
        )


def _publish(out: str, options: RunOptions) -> None:
    """--table: merge the finished OUT into the Delta table (`skutag publish`); a shard that did not finish
    OUT says so and leaves publishing to the shard that does."""
    from skutag.batchrun.commit.reader import is_complete
    from skutag.batchrun.publish.delta import publish
    from skutag.batchrun.publish.night import read_night

    if not is_complete(out, options.storage_options):
        click.echo(
            f"--table {options.table}: not published, {out} is not complete yet (other shards)", err=True
        )
        return
    night = read_night(out, options.storage_options)
    result = publish(
        night, options.table, keep_removed=options.keep_removed, table_options=options.table_options
    )
    click.echo(result.describe(), err=True)


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
    if summary.attempt_decoded:
        work = (
            f"{plural(summary.attempt_decoded, 'image')} decoded, {summary.images_per_s:.1f} images/s overall "
            f"(start-up included) on {summary.device}"
        )
    else:
        work = "nothing to decode (every row reused or already committed)"
    return (
        f"{plural(summary.rows, 'row')} ({summary.ok} ok, {plural(summary.errors, 'error')}"
        f"{': ' + kinds if kinds else ''}; {skipped} skipped, {plural(summary.duplicates, 'duplicate')}{since}) "
        f"in {summary.wall_s:.1f} s, {work} -> {summary.out}"
    )


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
