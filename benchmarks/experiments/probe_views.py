"""Would other pixels (crop, squash, pad, flips) help a linear probe? No view gains more than 1.4 points (RESULTS.md, model_table; history/0.1-0.3.md, issue 19).

Would other pixels help the head? 5-fold linear probe of a frozen backbone under four views.

For each data set, the backbone's pooled features of every photo are computed once per view:
`crop0.875` (shorter side to 256, centre 224: timm's default and the card's), `crop1.0` (shorter
side to 224, centre 224), `squash` (the whole photo resized to 224x224) and `pad` (the whole
photo padded to a white square, then resized), each with and without a horizontally flipped
copy (flipped features added to training, test features averaged over both). A linear head is
trained as the trainer's head phase trains it (`benchmarks.experiments.head_sweep.train_head`: Adam 1e-3,
40 epochs, label smoothing 0.1) on k-1 folds and scored on the held-out fold.

    python -m benchmarks.experiments.probe_views ../shared/data/catalog-photos ../shared/data/clothing
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from benchmarks.common import folds, header
from benchmarks.experiments.head_sweep import train_head

VIEWS = ("crop0.875", "crop1.0", "squash", "pad")


def pixels(path: Path, view: str, mean: np.ndarray, std: np.ndarray, size: int = 224) -> torch.Tensor:
    image = Image.open(path)
    image.draft("RGB", (size * 2, size * 2))
    image = ImageOps.exif_transpose(image).convert("RGB")
    width, height = image.size
    if view.startswith("crop"):
        short = round(size / float(view.removeprefix("crop")))
        scale = short / min(width, height)
        image = image.resize(
            (max(short, round(width * scale)), max(short, round(height * scale))), Image.BICUBIC
        )
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image = image.crop((left, top, left + size, top + size))
    elif view == "squash":
        image = image.resize((size, size), Image.BICUBIC)
    else:  # pad
        side = max(width, height)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        image = square.resize((size, size), Image.BICUBIC)
    array = (np.asarray(image, dtype=np.float32) / 255 - mean) / std
    return torch.from_numpy(array).permute(2, 0, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, nargs="+")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--arch", default="timm/tf_efficientnet_lite0")
    args = parser.parse_args(argv)

    from skutag.trainer.data import find_labelled
    from skutag.trainer.features import split_head
    from skutag.trainer.model import build

    print(header("torch", "timm"))
    print("| data | view | probe acc (min fold) | + flipped copy (min fold) |\n|---|---|---|---|")
    for root in args.data:
        samples = find_labelled(root)
        classes = sorted({s.label for s in samples})
        built = build(args.arch, len(classes), "imagenet")
        mean = np.array(built.preprocessing.mean, np.float32)
        std = np.array(built.preprocessing.std, np.float32)
        body, _ = split_head(built.model)
        body.eval()
        labels = torch.tensor([classes.index(s.label) for s in samples])
        position = {Path(s.path).resolve(): i for i, s in enumerate(samples)}
        splits = [
            ([position[f.resolve()] for f in train], [position[f.resolve()] for f in test])
            for train, test in folds(root, args.folds, 0)
        ]
        for view in VIEWS:
            plain, flipped = [], []
            torch.set_num_threads(os.cpu_count() or 1)
            with torch.no_grad():
                for start in range(0, len(samples), 32):
                    batch = torch.stack(
                        [pixels(s.path, view, mean, std) for s in samples[start : start + 32]]
                    )
                    plain.append(body(batch))
                    flipped.append(body(torch.flip(batch, [3])))
            x, xf = torch.cat(plain), torch.cat(flipped)
            torch.set_num_threads(1)
            scores = {}
            for name, with_flip in (("plain", False), ("flip", True)):
                accs = []
                for a, b in splits:
                    train_x, train_y = (
                        (torch.cat([x[a], xf[a]]), labels[a].repeat(2)) if with_flip else (x[a], labels[a])
                    )
                    test_x = (x[b] + xf[b]) / 2 if with_flip else x[b]
                    pred = train_head(train_x, train_y, test_x, len(classes), 1e-3, 40, 0.1)
                    accs.append(float((pred == labels[b]).float().mean()))
                scores[name] = f"{statistics.fmean(accs):.3f} ({min(accs):.3f})"
            print(f"| {root.name} | {view} | {scores['plain']} | {scores['flip']} |", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
