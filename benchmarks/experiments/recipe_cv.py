"""Does a whole-network fine-tune after the head (LP-FT) reach 0.93 / 0.86? No: 0.908 / 0.806 at the last epoch, 5-fold (RESULTS.md, model_table; history/0.1-0.3.md, issue 19).

Choose the training defaults by measurement: k-fold cross-validation of training configs on real photos.

Each config trains once per fold through `trainer.train.train` (the code `skutag train` runs),
on an ImageFolder view of the fold (symlinks), validating on the held-out fold; history.csv
gives every epoch, so one run also shows how many fine-tuning epochs pay. Reported per
config and data set: mean (and min) over folds of the held-out accuracy and macro F1 at the
best epoch (chosen by val macro F1, as the trainer does) and at the last epoch, seconds per
head epoch and per fine-tuning epoch, with the load average before and after.

    python -m benchmarks.experiments.recipe_cv ../shared/data/clothing ../shared/data/catalog-photos --folds 3 \\
        --config head=cache_features=1,augment=none,epochs=20,lr=1e-3 \\
        --config recipe=epochs=24,head_epochs=20,lr=1e-3

A config is NAME=field=value,... over trainer.config.TrainConfig (defaults: its own, with
--arch/--weights from the command line).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import folds, header, link_tree
from skutag.fsio import atomic_write_text


def parse_config(text: str) -> tuple[str, dict[str, object]]:
    from skutag.trainer.config import TrainConfig

    name, _, rest = text.partition("=")
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    fields: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        kind = str(types[key])
        if "bool" in kind:
            fields[key] = value in ("1", "true", "yes")
        elif "int" in kind and "." not in value and "e" not in value:
            fields[key] = int(value)
        elif "float" in kind:
            fields[key] = float(value)
        else:
            fields[key] = value
    return name, fields


def run_fold(root: Path, train: list[Path], val: list[Path], fields: dict, work: Path) -> list[dict]:
    from skutag.trainer.config import TrainConfig
    from skutag.trainer.train import train as run_training

    data = link_tree(root, train, work / "train")
    held = link_tree(root, val, work / "val")
    out = work / "run"
    run_training(TrainConfig(data=str(data), val=str(held), out=str(out), gradcam=False, **fields))
    with open(out / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def summarise(histories: list[list[dict]], head_epochs: int) -> dict[str, float]:
    best = [max(h, key=lambda r: float(r["macro_f1"])) for h in histories]
    last = [h[-1] for h in histories]

    def mean(rows: list[dict], key: str) -> float:
        return statistics.fmean(float(r[key]) for r in rows)

    head = [float(r["seconds"]) for h in histories for r in h[:head_epochs]]
    tune = [float(r["seconds"]) for h in histories for r in h[head_epochs:]]
    return {
        "best_acc": mean(best, "accuracy"),
        "best_acc_min": min(float(r["accuracy"]) for r in best),
        "best_f1": mean(best, "macro_f1"),
        "last_acc": mean(last, "accuracy"),
        "last_f1": mean(last, "macro_f1"),
        "head_s": statistics.fmean(head) if head else 0.0,
        "tune_s": statistics.fmean(tune) if tune else 0.0,
        "curve": ", ".join(
            f"{statistics.fmean(float(h[i]['accuracy']) for h in histories):.3f}"
            for i in range(min(len(h) for h in histories))
        ),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, nargs="+", help="ImageFolder trees (one class per folder)")
    parser.add_argument("--config", action="append", required=True, help="NAME=field=value,...")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--arch", default="timm/tf_efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args(argv)

    from skutag.trainer.config import TrainConfig

    lines = [header("torch", "timm"), ""]
    lines.append(
        "| data | config | best-epoch acc (min fold) | best-epoch macro F1 | last-epoch acc | last macro F1 "
        "| s/head epoch | s/fine-tune epoch | load before -> after | mean acc per epoch |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for root in args.data:
        splits = folds(root, args.folds, args.seed)
        for text in args.config:
            name, fields = parse_config(text)
            fields = {"arch": args.arch, "weights": args.weights, "workers": args.workers} | fields
            probe = TrainConfig(data="", out="", **fields)
            head_epochs = probe.resolved_head_epochs()
            before = os.getloadavg()[0]
            start = time.perf_counter()
            histories = []
            for i, (train, val) in enumerate(splits):
                with tempfile.TemporaryDirectory(prefix="skutag-cv-") as work:
                    histories.append(run_fold(root, train, val, fields, Path(work)))
                print(f"{root.name} {name} fold {i + 1}/{len(splits)} done", flush=True)
            s = summarise(histories, head_epochs)
            after = os.getloadavg()[0]
            lines.append(
                f"| {root.name} | {name} | {s['best_acc']:.3f} ({s['best_acc_min']:.3f}) | {s['best_f1']:.3f} "
                f"| {s['last_acc']:.3f} | {s['last_f1']:.3f} | {s['head_s']:.1f} | {s['tune_s']:.1f} "
                f"| {before:.1f} -> {after:.1f} | {s['curve']} |"
            )
            print(lines[-1], f"({time.perf_counter() - start:.0f} s)", flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
