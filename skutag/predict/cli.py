"""`skutag predict MODEL IMAGE...`: top-k labels and scores per image, as a table or JSON."""

from __future__ import annotations

import click


@click.command()
@click.argument("model", type=click.Path(exists=True))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option(
    "--top-k", "topk", type=click.IntRange(min=1), default=3, show_default=True, help="Labels per image."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per image) instead of a table.")
@click.option(
    "--device",
    type=click.Choice(("cpu", "cuda", "auto")),
    default="cpu",
    show_default=True,
    help="Where ONNX and run-dir models run (edge formats: the CPU).",
)
def predict(model, images, topk, as_json, device) -> None:
    """Top-k labels of IMAGE... (files or folders) from MODEL: a run dir, .safetensors, .onnx, .pte,
    .tflite, .xml or .mlpackage, each in its own runtime.

    An image that cannot be decoded gets a row with its error; the exit code is 0 when every
    image was predicted and 3 when some were not.
    """
    import json
    import sys

    from skutag.predict.model import open_model, predict_files

    loaded = open_model(model, device)
    results = predict_files(loaded, _expand(images), topk)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        _print_table(loaded, results)
    if any(r.error is not None for r in results):
        sys.exit(3)


def _expand(images: tuple[str, ...]) -> list[str]:
    """Files as given; a folder stands for the image files under it, sorted."""
    import os

    files: list[str] = []
    for image in images:
        if os.path.isdir(image):
            from skutag.listing import local_path, walk_images  # (pyarrow, storage): only for a folder

            for entry in walk_images(image):
                if entry.size is None:
                    continue
                shown = os.path.join(image, entry.id)  # as the user named the folder
                files.append(shown if os.path.exists(shown) else os.fsdecode(local_path(entry.uri)))
        else:
            files.append(image)
    return files


def _print_table(loaded, results) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{loaded.path.name} ({loaded.kind}, {loaded.card.num_classes} classes)")
    table.add_column("image", overflow="fold")
    table.add_column("label", overflow="fold")
    table.add_column("score", justify="right")
    heads = [h.name for h in loaded.card.attributes or ()]
    for name in heads:  # one column per attribute head: the values given, with their scores
        table.add_column(name, overflow="fold")
    for r in results:
        if r.error is not None:
            table.add_row(r.image, f"[red]error ({r.error_kind}): {r.error}[/red]", "", *[""] * len(heads),
                          end_section=True)  # fmt: skip
            continue
        attributes = [", ".join(f"{v} {s:.2f}" for v, s in (r.attributes or {}).get(n, ())) for n in heads]
        for rank, (label, score) in enumerate(zip(r.labels, r.scores, strict=True)):
            table.add_row(
                r.image if rank == 0 else "", label, f"{score:.3f}", *(attributes if rank == 0 else [""] * len(heads)),
                end_section=rank == len(r.labels) - 1,
            )  # fmt: skip
    Console().print(table)
