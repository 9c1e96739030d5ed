"""`skutag index`, `skutag similar` and `skutag explain`: thin click commands over insight's modules.

Imports click and the stdlib at module level only; FAISS, ONNX Runtime and torch load
when a command runs, and a missing `insight` extra is one line saying how to install it.
"""

from __future__ import annotations

import json
import sys

import click

from skutag.errors import InputError
from skutag.options import ORT_DEVICES, device_option, input_path

FORMATS = ("table", "json", "parquet")


def model_option(f):
    return click.option(
        "--model",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="The ONNX model that made the runs (default: the one the runs' _summary.json names; sha256 checked).",
    )(f)


@click.command("index")
@input_path("outs", file_okay=False, nargs=-1)
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False), help="Index directory to write."
)
@click.option(
    "--kind",
    type=click.Choice(["auto", "flat", "ivf"]),
    default="auto",
    show_default=True,
    help="flat: exact search; ivf: approximate (IVF, fp16 vectors); auto: flat up to 200,000 rows.",
)
@click.option(
    "--since",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="An earlier index: the new one is rebuilt complete, reusing its trained IVF lists when the model is the same.",
)
@model_option
def index(outs: tuple[str, ...], out: str, kind: str, since: str | None, model: str | None) -> None:
    """Build a nearest-neighbour index over the `embedding` column of batch runs OUT..."""
    import time

    from skutag.insight.index import build_index

    start = time.perf_counter()
    built = build_index(list(outs), out, kind=kind, model=model, since=since)
    info = built.info
    model_line = info.model or "not found (pass --model for image queries)"
    click.echo(
        f"indexed {info.rows:,} rows ({info.kind}, {info.dim}-d) from {len(outs)} run(s) in "
        f"{time.perf_counter() - start:.1f} s -> {out}; model {model_line}"
    )


@click.command("similar")
@input_path("index_dir", file_okay=False)
@click.argument("images", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--id", "ids", multiple=True, help="An indexed id to query (repeatable).")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Answers per query.")
@click.option("--same-label", is_flag=True, help="Only answers with the query's (predicted) label.")
@click.option("--duplicates", is_flag=True, help="List groups of identical or near-identical photos instead.")
@click.option(
    "--threshold",
    type=click.FloatRange(min=0.0, max=2.0),
    default=None,
    help="--duplicates: cosine distance under which two photos are near copies (default: calibrated, see RESULTS.md).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Default: table on a terminal, else json.",
)
@click.option(
    "--out", "out", type=click.Path(dir_okay=False), default=None, help="Write the answer to this file."
)
@click.option(
    "--nprobe",
    type=click.IntRange(min=1),
    default=None,
    help="IVF indexes: lists searched per query (default: the index's own, and 4 for --duplicates; "
    "more is slower and nearer exact).",
)
@model_option
@device_option(ORT_DEVICES)
def similar(
    index_dir: str,
    images: tuple[str, ...],
    ids: tuple[str, ...],
    k: int,
    same_label: bool,
    duplicates: bool,
    threshold: float | None,
    fmt: str | None,
    out: str | None,
    nprobe: int | None,
    model: str | None,
    device: str,
) -> None:
    """Nearest listings of indexed ids (--id) or of IMAGE files, or near-duplicate groups (--duplicates)."""
    from skutag.insight.index import load_index

    if duplicates == bool(ids or images):
        raise click.UsageError("give --id ID or IMAGE... to query, or --duplicates, and not both")
    if ids and images:
        raise click.UsageError("give --id or IMAGE..., not both")
    loaded = load_index(index_dir, nprobe=nprobe)
    if duplicates:
        from skutag.insight.duplicates import DEFAULT_THRESHOLD, duplicate_groups

        table = duplicate_groups(loaded, DEFAULT_THRESHOLD if threshold is None else threshold, nprobe)
    else:
        from skutag.insight.similar import id_queries, image_queries
        from skutag.insight.similar import similar as nearest

        queries = (
            id_queries(loaded, list(ids))
            if ids
            else image_queries(loaded, list(images), model=model, device=device)
        )
        table = nearest(loaded, queries, k, same_label=same_label)
    emit(table, fmt, out)


def emit(table, fmt: str | None, out: str | None) -> None:
    """Print or write `table` as a rich table, JSON records or Parquet (Parquet needs --out)."""
    fmt = fmt or ("table" if sys.stdout.isatty() and out is None else "json")
    if fmt == "parquet":
        if out is None:
            raise InputError("--format parquet needs --out FILE")
        import pyarrow.parquet as pq

        from skutag.fsio import atomic_path

        with atomic_path(out) as tmp:
            pq.write_table(table, tmp)
        click.echo(f"wrote {table.num_rows} rows -> {out}", err=True)
        return
    if fmt == "json":
        text = json.dumps(table.to_pylist(), indent=None if out else 1)
        if out:
            from skutag.fsio import atomic_write_text

            atomic_write_text(out, text + "\n")
        else:
            click.echo(text)
        return
    from rich.console import Console
    from rich.table import Table

    view = Table(*table.column_names)
    for row in table.to_pylist():
        view.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    if out is None:
        Console().print(view)
        return
    with open(out, "w") as handle:
        Console(file=handle, width=200).print(view)


@click.command("explain")
@input_path("run")
@click.argument("images", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False), help="Directory for the heatmaps."
)
@click.option(
    "--class", "target", default=None, help="Explain this class (default: each image's predicted class)."
)
@click.option(
    "--mistakes",
    "report",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="A report directory (RUN/report or `skutag eval`'s): heatmaps over its worst mistakes' contact sheet.",
)
def explain(run: str, images: tuple[str, ...], out: str, target: str | None, report: str | None) -> None:
    """Grad-CAM heatmaps of a trained RUN (run dir or .safetensors) on IMAGE... or a report's mistakes."""
    from skutag.trainer.explain import explain_images, explain_mistakes

    if not images and report is None:
        raise click.UsageError("give IMAGE... or --mistakes REPORT")
    if images:
        done = explain_images(run, list(images), out, target=target)
        click.echo(f"wrote {len(done)} heatmaps -> {out}")
    if report is not None:
        click.echo(f"wrote {explain_mistakes(run, report, out)}")
