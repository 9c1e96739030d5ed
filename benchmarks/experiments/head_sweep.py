"""Which lr, epochs and label smoothing for the head phase? lr 1e-3, 40 epochs, smoothing 0.1 (RESULTS.md, model_table; history/0.1-0.3.md, issue 19).

The head phase's defaults by measurement: k-fold CV of the head alone on cached backbone features.

Features of every photo are computed once (the eval pixels, as the trainer's cache), then for
each (lr, epochs, label smoothing) the head trains as the trainer's head phase does (Adam,
batch 32, cosine per step, the same Engine) on k-1 folds and is scored on the held-out fold.
Cheap (seconds per setting once the features exist), so it can sweep what fine-tuning cannot.

    python -m benchmarks.experiments.head_sweep ../shared/data/clothing ../shared/data/catalog-photos --folds 3
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import folds, header


def features(
    root: Path, arch: str, weights: str, image_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from skutag.trainer.augment import Normalizer
    from skutag.trainer.data import CatalogDataset, find_labelled
    from skutag.trainer.features import extract_features, split_head
    from skutag.trainer.model import build
    from torch.utils.data import DataLoader

    from skutag.card import ModelCard

    samples = find_labelled(root)
    classes = sorted({s.label for s in samples})
    built = build(arch, len(classes), weights)
    p = built.preprocessing
    size = image_size or p.image_size
    card = ModelCard(
        arch=arch, classes=tuple(classes), image_size=size, resize_size=p.resize_size(size),
        mean=p.mean, std=p.std, interpolation=p.interpolation,
    )  # fmt: skip
    loader = DataLoader(CatalogDataset(samples, {c: i for i, c in enumerate(classes)}, card), batch_size=32)
    body, _ = split_head(built.model)
    normalizer = Normalizer(card)
    cache = extract_features(body, loader, normalizer)
    paths = [samples[i].path for i in cache.indices.tolist()]
    return cache.features, cache.labels, paths


def train_head(x, y, xv, classes: int, lr: float, epochs: int, smoothing: float, seed: int = 0):
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    steps = epochs * -(-len(x) // 32)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * min(1.0, s / steps))))
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), 32):
            take = order[start : start + 32]
            loss = torch.nn.functional.cross_entropy(head(x[take]), y[take], label_smoothing=smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        return head(xv).argmax(1)


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, average="macro"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, nargs="+")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--arch", default="timm/tf_efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--lrs", default="1e-3,3e-3,1e-2")
    parser.add_argument("--epochs", default="10,20,40")
    parser.add_argument("--smoothing", default="0,0.1")
    parser.add_argument("--image-sizes", default="", help="crop sizes to compare (default: the weights' own)")
    args = parser.parse_args(argv)
    print(header("torch", "timm"))
    print("| data | image size | lr | head epochs | label smoothing | accuracy (min fold) | macro F1 |")
    print("|---|---|---|---|---|---|---|")
    sizes = [int(v) for v in args.image_sizes.split(",") if v] or [None]
    for root, size in [(root, size) for root in args.data for size in sizes]:
        torch.set_num_threads(os.cpu_count() or 1)
        x, y, paths = features(root, args.arch, args.weights, size)
        torch.set_num_threads(1)  # a linear head: one thread is fastest, and spin-free on a busy machine
        position = {Path(p).resolve(): i for i, p in enumerate(paths)}
        splits = folds(root, args.folds, 0)
        classes = int(y.max()) + 1
        grid = itertools.product(
            map(float, args.lrs.split(",")),
            map(int, args.epochs.split(",")),
            map(float, args.smoothing.split(",")),
        )
        for lr, epochs, smoothing in grid:
            accs, f1s = [], []
            for train, val in splits:
                a = [position[f.resolve()] for f in train if f.resolve() in position]
                b = [position[f.resolve()] for f in val if f.resolve() in position]
                pred = train_head(x[a], y[a], x[b], classes, lr, epochs, smoothing).numpy()
                accs.append(float((pred == y[b].numpy()).mean()))
                f1s.append(macro_f1(y[b].numpy(), pred))
            print(
                f"| {root.name} | {size or 'own'} | {lr:g} | {epochs} | {smoothing:g} | {statistics.fmean(accs):.3f} "
                f"({min(accs):.3f}) | {statistics.fmean(f1s):.3f} |",
                flush=True,
            )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
