"""Decode benchmark: skutag.images versus full decode + torchvision Resize(256)/CenterCrop(224).

Same process, same files (catalog JPEGs of 1000x1000 by default), rounds interleaved so
both methods see the same machine state; the best round of each is reported.

    python -m benchmarks.image_suite [--n 300] [--size 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.machine import machine_info, markdown_header
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="number of JPEGs")
    parser.add_argument("--size", type=int, default=1000, help="side of the square catalog JPEGs")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

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

    info = machine_info("pillow", "torchvision", "numpy")
    ours, theirs = best.values()
    print(f"### Decode to 224x224 uint8, {len(paths)} JPEGs of {args.size}x{args.size}, one process\n")
    print(markdown_header(info))
    print(f"| method | images/s (best of {args.rounds} rounds) |")
    print("|---|---|")
    for name, value in best.items():
        print(f"| {name} | {value:.1f} |")
    print(f"\nspeed-up: **{ours / theirs:.2f}x**")


if __name__ == "__main__":
    main()
