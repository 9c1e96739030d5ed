"""`skutag report OUT [--since PREV]` and `skutag review OUT`: click commands over the pages.

Imports click and the stdlib at module level; Arrow, Jinja2, Starlette and uvicorn load when a
command runs (a missing `pages` extra is one line, exit 2).
"""

from __future__ import annotations

import click

STORAGE_HELP = "fsspec option for object storage, repeatable (KEY=VALUE; dotted keys nest)."


@click.command("report")
@click.argument("out")
@click.option(
    "--since", default=None, help="An earlier OUT (last night): label shifts, changes, new and removed."
)
@click.option(
    "--max-thumbs", type=click.IntRange(min=0), default=200, show_default=True, help="Thumbnails at most."
)
@click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE", help=STORAGE_HELP)
def report(out: str, since: str | None, max_thumbs: int, storage_options: tuple[str, ...]) -> None:
    """Write OUT/_report/index.html and report.json: what changed tonight, the review queue, the errors."""
    from skutag.pages.render import write_report

    from skutag.storage import join, parse_options

    made = write_report(out, since, parse_options(storage_options), max_thumbs=max_thumbs)
    click.echo(report_line(made, join(out, "_report", "index.html")), err=True)


def report_line(made: dict, where: str) -> str:
    c = made["counts"]
    review = made["review"]["rows"] if made.get("review") else 0
    changes = sum(pair["rows"] for pair in made.get("changes", []))
    since = f", {changes:,} label changes" if made.get("since") else ""
    return f"report: {c['rows']:,} rows, {c['errors']:,} errors, {review:,} to review{since} -> {where}"


@click.command("review")
@click.argument("out")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port (default: a free one).")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (localhost unless told)."
)
@click.option("--who", default=None, help="Name recorded with each decision (default: the login name).")
@click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE", help=STORAGE_HELP)
def review(out: str, port: int, host: str, who: str | None, storage_options: tuple[str, ...]) -> None:
    """Serve the review queue of OUT: accept, pick another label, or mark as not a product.

    Each decision is written at once to OUT/_review/; a restarted page skips decided rows.
    """
    import getpass

    from skutag.pages.review.server import serve

    from skutag.storage import parse_options

    serve(
        out,
        host=host,
        port=port,
        who=who or getpass.getuser(),
        storage_options=parse_options(storage_options),
    )
