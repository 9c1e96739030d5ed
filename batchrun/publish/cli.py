"""`skutag publish OUT --table URI`: merge a finished OUT into a Delta Lake table keyed by `id`.

Imports click and the stdlib at module level; the reader and delta-rs when the command runs.
Exit codes: 0 published (or already published), 2 an unfinished OUT, bad options or a missing
`delta` extra, 75 another publisher committed first (retry).
"""

from __future__ import annotations

import click


@click.command()
@click.argument("out")
@click.option(
    "--table", required=True, metavar="URI", help="The Delta Lake table: a path, s3://... or gs://..."
)
@click.option(
    "--table-option", "table_options", multiple=True, metavar="KEY=VALUE",
    help="delta-rs storage option, repeatable (AWS_REGION=..., conditional_put=etag); never printed.",
)  # fmt: skip
@click.option(
    "--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
    help="fsspec option to read an OUT on object storage, repeatable; never printed.",
)  # fmt: skip
@click.option(
    "--keep-removed", is_flag=True,
    help="Keep the rows of ids that left the plan, with `removed_at` set, instead of deleting them.",
)  # fmt: skip
def publish(out, table, table_options, storage_options, keep_removed) -> None:
    """Merge the finished OUT (it has _SUCCESS) into the Delta table at --table, keyed by `id`.

    \b
    New ids are inserted, changed rows updated, ids that left the plan deleted (or kept with
    --keep-removed), in one commit. After `skutag run --since PREV`, when the table holds PREV,
    only the night's changes are merged. Publishing the same OUT again changes nothing.
    """
    from skutag.batchrun.options import key_values
    from skutag.batchrun.publish.delta import publish as publish_night
    from skutag.batchrun.publish.night import read_night

    from skutag.storage import parse_options

    night = read_night(out, parse_options(storage_options))
    result = publish_night(
        night, table, keep_removed=keep_removed, table_options=key_values(table_options, "--table-option")
    )
    click.echo(result.describe(), err=True)
