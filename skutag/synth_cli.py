"""`skutag synth`: the command around `skutag.synth` (kept apart so `--help` imports no numpy)."""

from __future__ import annotations

import click

from skutag.options import seed_option


@click.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--n", "count", type=click.IntRange(min=1), default=200, show_default=True, help="Number of images."
)
@click.option(
    "--classes",
    type=click.IntRange(min=2, max=64),
    default=10,
    show_default=True,
    help="Number of classes (one folder each).",
)
@click.option(
    "--size",
    "size_range",
    default="600-1200",
    show_default=True,
    help="Range of the longer side in pixels, MIN-MAX.",
)
@click.option(
    "--png-fraction",
    type=click.FloatRange(0, 1),
    default=0.15,
    show_default=True,
    help="Share of images written as PNG with a transparent background.",
)
@click.option(
    "--split",
    "val_fraction",
    type=click.FloatRange(0, 0.9),
    default=0.0,
    show_default=True,
    help="Write train/ and val/ subtrees with this share in val/ (0: one tree).",
)
@seed_option
def synth(
    out: str, count: int, classes: int, size_range: str, png_fraction: float, val_fraction: float, seed: int
) -> None:
    """Make a synthetic catalog of product-like photos in OUT (one folder per class).

    Deterministic for a seed; nothing is downloaded. Each class has its own shape,
    colour and texture, so a model can learn them.
    """
    from skutag.synth import SynthSpec, make_catalog

    try:
        low, high = (int(v) for v in size_range.split("-"))
    except ValueError:
        raise click.BadParameter("expected MIN-MAX, e.g. 600-1200", param_hint="--size") from None
    if not 32 <= low <= high:
        raise click.BadParameter("need 32 <= MIN <= MAX", param_hint="--size")
    spec = SynthSpec(
        count=count,
        classes=classes,
        min_size=low,
        max_size=high,
        png_fraction=png_fraction,
        val_fraction=val_fraction,
        seed=seed,
    )
    summary = make_catalog(out, spec, progress=True)
    click.echo(f"wrote {summary.images} images in {len(summary.classes)} classes to {out}")
