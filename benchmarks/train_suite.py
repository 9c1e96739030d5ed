"""Trainer benchmark: the frozen-backbone path versus the plain loop, and 30 epochs with --cache-features.

All in one run on the same synthetic catalog (docs/design.md, the rules of measurement):
  * training images/s with `--freeze backbone` (the backbone under `torch.no_grad`, only the
    head differentiated, frozen BatchNorm in eval mode), through `skutag train`;
  * the plain loop: the same DataLoader and augmentation, the whole torchvision model in
    train mode under autograd (`loss.backward()` through every layer) and an optimizer over
    the head only, i.e. what a naive "train only the classifier" script does;
  * the same two on in-memory batches (model step only, no decoding: the ceiling);
  * wall time of a whole `skutag train --freeze backbone --augment none` run of --epochs
    epochs with and without `--cache-features` (target: cached at least 10x faster), and
    the time inside its epochs alone. At the small default sizes the fixed costs (imports,
    model build, a checkpoint per epoch, the report) dominate the whole-run ratio; at real
    sizes (--arch resnet50 --image-size 224, thousands of images) the epochs do.

    python -m benchmarks.train_suite                          # small: resnet18, 64 px, a few minutes on 2 cores
    python -m benchmarks.train_suite --arch resnet50 --images 2000 --image-size 224 --batch-size 32 --device cuda

Prints a markdown table with the machine, versions and command (and writes it to --out).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import header, load_average
from skutag.fsio import atomic_write_text
from skutag.synth import SynthSpec, make_catalog


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument(
        "--images", type=int, default=96, help="synthetic catalog size (25%% held out for val)"
    )
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument(
        "--source-size", default="96-160", help="longer side of the synthetic photos, MIN-MAX"
    )
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the cached vs uncached comparison")
    parser.add_argument("--throughput-epochs", type=int, default=2, help="epochs per images/s measurement")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--data", type=Path, help="an existing train/ val/ catalog instead of a synthetic one"
    )
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args(argv)

    load = load_average()
    with tempfile.TemporaryDirectory(prefix="skutag-train-bench-") as tmp:
        data = args.data or _catalog(Path(tmp) / "data", args)
        rows = [
            (
                "images/s, frozen backbone (skutag train --freeze backbone)",
                _skutag_images_per_s(data, tmp, args),
            ),
            ("images/s, plain loop (whole model under autograd)", _plain_loop_images_per_s(data, args)),
        ]
        frozen_step, plain_step = _step_images_per_s(args)
        rows += [("images/s, model step only, frozen backbone", frozen_step)]
        rows += [("images/s, model step only, plain loop", plain_step)]
        cached, cached_epochs = _run_seconds(data, Path(tmp) / "cached", args, cache=True)
        uncached, uncached_epochs = _run_seconds(data, Path(tmp) / "uncached", args, cache=False)
        rows += [
            (f"seconds, whole run of {args.epochs} epochs with --cache-features", cached),
            (f"seconds, whole run of {args.epochs} epochs without", uncached),
            ("seconds inside the epochs (train + val, history.csv), with --cache-features", cached_epochs),
            ("seconds inside the epochs (train + val, history.csv), without", uncached_epochs),
        ]
    speedups = [
        ("frozen backbone vs plain loop (end to end)", rows[0][1] / rows[1][1]),
        ("frozen backbone vs plain loop (model step)", frozen_step / plain_step),
        (f"whole {args.epochs}-epoch run: cached vs not (target >= 10x)", uncached / cached),
        (
            f"{args.epochs} epochs without setup, checkpoints and report: cached vs not",
            uncached_epochs / cached_epochs,
        ),
    ]
    text = _markdown(args, rows, speedups, load)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)


def _catalog(root: Path, args: argparse.Namespace) -> Path:
    low, high = (int(v) for v in args.source_size.split("-"))
    spec = SynthSpec(count=args.images, classes=args.classes, min_size=low, max_size=high, val_fraction=0.25)
    make_catalog(root, spec)
    return root


def _config(data: Path, out: Path, args: argparse.Namespace, **changes):
    from skutag.trainer.config import TrainConfig

    options = dict(
        data=str(data), out=str(out), arch=args.arch, weights="none", freeze="backbone", epochs=args.epochs,
        batch_size=args.batch_size, image_size=args.image_size, workers=args.workers, device=args.device,
        head_solver="adam",  # minibatch epochs over cached features against epochs over decoded images
    )  # fmt: skip
    return TrainConfig(**(options | changes))


def _skutag_images_per_s(data: Path, tmp: str, args: argparse.Namespace) -> float:
    """Median training images/s of the epochs after the first, from history.csv."""
    import csv

    from skutag.trainer.train import train

    out = Path(tmp) / "frozen"
    train(_config(data, out, args, epochs=args.throughput_epochs, augment="standard"))
    with open(out / "history.csv", newline="") as f:
        rates = [float(r["images_per_s"]) for r in csv.DictReader(f)]
    return statistics.median(rates[1:] or rates)


def _plain_loop_images_per_s(data: Path, args: argparse.Namespace) -> float:
    """The naive loop on the same loader: everything under autograd, only the head optimised."""
    from skutag.trainer.augment import Normalizer, train_transform
    from skutag.trainer.config import default_workers
    from skutag.trainer.data import CatalogDataset, find_splits
    from skutag.trainer.distributed import resolve_device
    from skutag.trainer.loop import amp_dtype

    from skutag.card import ModelCard

    device, _ = resolve_device(args.device)
    splits = find_splits(data, val_dir=None, val_split=None, seed=0)
    card = ModelCard.for_training(args.arch, splits.classes, image_size=args.image_size)
    index = {name: i for i, name in enumerate(splits.classes)}
    dataset = CatalogDataset(splits.train, index, card, train_transform("standard", args.image_size))
    workers = default_workers() if args.workers is None else args.workers
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=workers
    )
    model, head = _model(args, len(splits.classes), device)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-4)
    normalizer, dtype = Normalizer(card).to(device), amp_dtype("auto", device)
    rates = []
    for _ in range(args.throughput_epochs):
        model.train()
        start, seen = time.perf_counter(), 0
        for batch in loader:
            x, y = normalizer(batch["image"].to(device)), batch["label"].to(device)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = nn.functional.cross_entropy(model(x).float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(y)
        _sync(device)
        rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates[1:] or rates)


def _step_images_per_s(args: argparse.Namespace, steps: int = 8) -> tuple[float, float]:
    """Model step only, on one in-memory batch: frozen-backbone path vs everything under autograd."""
    from skutag.trainer.distributed import resolve_device
    from skutag.trainer.features import FrozenBackboneClassifier
    from skutag.trainer.freeze import apply_freeze, set_train_mode

    device, _ = resolve_device(args.device)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, args.classes, (args.batch_size,), device=device)
    results = []
    for frozen in (True, False):
        model, head = _model(args, args.classes, device)
        if frozen:
            apply_freeze(model, "backbone")
            set_train_mode(model)
            net = FrozenBackboneClassifier(model)
        else:
            net = model.train()
        optimizer = torch.optim.Adam(head.parameters(), lr=1e-4)
        for step in range(steps + 2):  # two warm-up steps
            if step == 2:
                _sync(device)
                start = time.perf_counter()
            loss = nn.functional.cross_entropy(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _sync(device)
        results.append(steps * args.batch_size / (time.perf_counter() - start))
    return results[0], results[1]


def _model(args: argparse.Namespace, classes: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    from skutag.trainer.model import build_model, classifier_name

    model = build_model(args.arch, classes, "none").to(device)
    return model, model.get_submodule(classifier_name(model))


def _run_seconds(data: Path, out: Path, args: argparse.Namespace, *, cache: bool) -> tuple[float, float]:
    """Wall seconds of the whole run (setup, feature pass, checkpoints, report), and of its epochs alone."""
    import csv

    from skutag.trainer.train import train

    start = time.perf_counter()
    train(_config(data, out, args, augment="none", cache_features=cache))
    wall = time.perf_counter() - start
    with open(out / "history.csv", newline="") as f:
        return wall, sum(float(r["seconds"]) for r in csv.DictReader(f))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _markdown(
    args: argparse.Namespace, rows: list[tuple[str, float]], speedups: list[tuple[str, float]], load: float
) -> str:
    lines = [
        f"### Trainer: frozen backbone and --cache-features ({args.arch}, {args.image_size} px, "
        f"batch {args.batch_size}, {args.images} images, device {args.device})",
        "",
        header("torch", "torchvision", before=load),
        "| measurement | value |",
        "|---|---:|",
        *(
            f"| {name} | {value:,.1f} |" if value >= 10 else f"| {name} | {value:.3f} |"
            for name, value in rows
        ),
        *(f"| speed-up: {name} | {value:.1f}x |" for name, value in speedups),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
