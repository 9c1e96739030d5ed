"""A synthetic catalog with planted near copies and byte copies, for the insight tests."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from PIL import Image

from skutag.images import to_rgb

# name -> how a near copy is made from its original (PIL image -> PIL image, saved as JPEG q=90 unless said)
COPY_KINDS = ("resized", "recompressed", "cropped")


def near_copy(original: Path, kind: str, out: Path) -> None:
    """Write a near copy of `original` to `out`: half size, JPEG quality 40, or the centre 90% crop."""
    image = to_rgb(Image.open(original))
    quality = 90
    if kind == "resized":
        image = image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.BICUBIC)
    elif kind == "recompressed":
        quality = 40
    elif kind == "cropped":
        dx, dy = image.width // 20, image.height // 20
        image = image.crop((dx, dy, image.width - dx, image.height - dy))
    else:
        raise ValueError(kind)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    out.write_bytes(buffer.getvalue())


def plant_copies(
    root: Path, originals: list[Path], byte_copies: list[Path], into: str = "copies"
) -> dict[str, set[str]]:
    """Near copies of `originals` (one per COPY_KINDS) and a byte copy of each of `byte_copies`.

    Returns the planted groups: original id -> ids of the group (original included), ids relative to `root`.
    """
    folder = root / into
    folder.mkdir(parents=True, exist_ok=True)
    groups: dict[str, set[str]] = {}
    for original in originals:
        key = original.relative_to(root).as_posix()
        groups[key] = {key}
        for kind in COPY_KINDS:
            target = folder / f"{original.stem}-{kind}.jpg"
            near_copy(original, kind, target)
            groups[key].add(target.relative_to(root).as_posix())
    for source in byte_copies:
        key = source.relative_to(root).as_posix()
        target = folder / f"{source.stem}-bytes{source.suffix}"
        shutil.copyfile(source, target)
        groups[key] = {key, target.relative_to(root).as_posix()}
    return groups
