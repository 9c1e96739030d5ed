"""Decode benchmark: skutag.images versus full decode + torchvision Resize(256)/CenterCrop(224).

Same process, same files (catalog JPEGs of 1000x1000 by default), rounds interleaved so
both methods see the same machine state; the best round of each is reported.

    python -m benchmarks.image_suite [--n 300] [--size 1000] [--rounds 5]

`--real DIR` measures on real photos instead (every image file under each DIR, listed by
`skutag.listing.walk_images`): `load_image` CPU ms per image against Pillow's draft decode alone
(`Image.open` + `draft` + `load`, no resize). Rounds are interleaved (the order rotates each
round); the median round per method and the median of the per-round ratios are reported.
(`benchmarks.experiments.release_decode` adds an older release's `load_image` to the same table.)

    python -m benchmarks.image_suite --real ../shared/data/catalog-photos --real ../shared/data/clothing --rounds 9
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import header, photos
from skutag.images import load_image
from skutag.synth import SynthSpec, make_catalog


def torchvision_baseline():
    from torchvision import transforms

    pipeline = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])

    def decode(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(pipeline(image.convert("RGB")))

    return decode


def skutag_images(path: Path) -> np.ndarray:
    return load_image(path).pixels


def images_per_second(decode, paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        pixels = decode(path)
        assert pixels.shape == (224, 224, 3)
    return len(paths) / (time.perf_counter() - start)


# -- real photos: load_image against Pillow's draft decode alone, before and after ----------


def pillow_draft_decode(resize_size: int = 256):
    """Pillow alone: open, the same JPEG draft scale load_image asks for, decode. No resize, no crop."""

    def decode(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            width, height = image.size
            scale = resize_size / min(width, height)
            if image.format == "JPEG" and scale < 1:
                image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
            image.load()
            return image.size

    return decode


def interleaved_ms(methods: dict[str, object], paths: list[Path], rounds: int) -> dict[str, list[float]]:
    """CPU ms per image of each method in each round, interleaved file by file.

    Every file is decoded by every method in turn (the order rotates from file to file), so
    the methods share the machine's state; process CPU time (`time.process_time`) leaves out the
    time this process waited for a core on a shared machine.
    """
    names = list(methods)
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        spent = dict.fromkeys(names, 0.0)
        for i, path in enumerate(paths):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                start = time.process_time()
                methods[name](path)
                spent[name] += time.process_time() - start
        for name in names:
            per_round[name].append(1000 * spent[name] / len(paths))
    return per_round


def report_real(
    folders: list[Path], rounds: int, release: tuple[str, Callable[[Path], object]] | None = None
) -> str:
    """A RESULTS.md section: ms per image of each method on each folder of real photos.

    `release`: (name, decode) of another `load_image` (an older release's) for the "x before" column.
    """
    methods: dict[str, Callable[[Path], object]] = {
        "Pillow draft decode alone (open + draft + load)": pillow_draft_decode()
    }
    if release is not None:
        methods[release[0]] = release[1]
    methods["load_image now"] = skutag_images
    baseline = next(iter(methods))
    release_name = release[0] if release else None
    lines = [
        f"### load_image on real photos vs Pillow's draft decode alone ({rounds} rounds, CPU ms, "
        "interleaved file by file)\n",
        header("pillow", "numpy"),
        "| photos | method | ms/image (median round) | min | max | x Pillow draft | x before |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for folder in folders:
        paths = photos(folder)
        for path in paths:  # warm the page cache: every method reads from memory
            path.read_bytes()
        times = interleaved_ms(methods, paths, rounds)
        for name, values in times.items():
            versus = [
                _ratio(values, times[baseline]),
                _ratio(values, times[release_name]) if release_name else "-",
            ]
            lines.append(
                f"| {folder.name} ({len(paths)}) | {name} | {statistics.median(values):.2f} | "
                f"{min(values):.2f} | {max(values):.2f} | {versus[0]} | {versus[1]} |"
            )
    lines.append("\nRatios are medians of the per-round ratios (both methods timed in the same round).")
    return "\n".join(lines) + "\n"


def _ratio(values: list[float], reference: list[float]) -> str:
    return f"{statistics.median(v / r for v, r in zip(values, reference, strict=True)):.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="number of JPEGs")
    parser.add_argument("--size", type=int, default=1000, help="side of the square catalog JPEGs")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--real", action="append", type=Path, help="measure on the photos under DIR (repeatable)"
    )
    args = parser.parse_args(argv)
    if args.real:
        print(report_real(args.real, args.rounds))
        return

    with tempfile.TemporaryDirectory() as tmp:
        spec = SynthSpec(
            count=args.n, classes=8, min_size=args.size, max_size=args.size, png_fraction=0.0, aspects=(1.0,)
        )
        make_catalog(tmp, spec)
        paths = sorted(Path(tmp).rglob("*.jpg"))
        for path in paths:  # warm the page cache: both methods read from memory
            path.read_bytes()
        methods = {
            "skutag.images (draft + resize + crop)": skutag_images,
            "PIL full decode + torchvision Resize/CenterCrop": torchvision_baseline(),
        }
        best = dict.fromkeys(methods, 0.0)
        for _ in range(args.rounds):
            for name, decode in methods.items():
                best[name] = max(best[name], images_per_second(decode, paths))

    ours, theirs = best.values()
    print(f"### Decode to 224x224 uint8, {len(paths)} JPEGs of {args.size}x{args.size}, one process\n")
    print(header("pillow", "torchvision", "numpy"))
    print(f"| method | images/s (best of {args.rounds} rounds) |")
    print("|---|---|")
    for name, value in best.items():
        print(f"| {name} | {value:.1f} |")
    print(f"\nspeed-up: **{ours / theirs:.2f}x**")


if __name__ == "__main__":
    main()
