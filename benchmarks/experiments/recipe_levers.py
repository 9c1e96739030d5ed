"""Which training recipe beats a logistic regression on frozen features? (RESULTS.md, model_table, 0.4; issue 29).

5-fold held-out comparison on the real photos, folds stratified by class and grouped by
product (`benchmarks.common.grouped_folds`: a catalog product's photos never sit on both
sides). Two stages, each writing WORK/<stage>.json and printing a markdown table:

`levers`: the backbone's pooled features of every photo under every cached view
(`skutag.trainer.views`, decoded once) are computed once per backbone, then per fold:
- `logreg`: the baseline, scikit-learn LogisticRegression (defaults, max_iter 5000) on the
  centre view's features of the whole training fold;
- `head[VIEWS]`: a linear head trained as the trainer's head phase trains it (Adam 1e-3,
  cosine, label smoothing 0.1, batch 32, 40 epochs) on the cached VIEWS of 80% of the
  training fold, the best epoch by macro F1 on the other 20% (centre view), as `skutag train
  --val-split 0.2` does; `+tta`: held-out probabilities averaged with the flipped view's;
- `lbfgs[VIEWS]`: the trainer's default head solver (`skutag.trainer.head_fit`, the logistic
  regression's optimum by L-BFGS, no epoch selection) on the same 80%;
- the same for Lite2 at its own resolution (260).
Seconds: backbone seconds per image per view (the cache's cost) and the head's seconds.

`train`: whole `skutag train` runs (`skutag.trainer.train.train`) per fold with `--val-split 0.2`,
scored on the held-out fold (PyTorch, centre crop; `+tta` with the flipped copy averaged):
`--config NAME=field=value,...` over TrainConfig, e.g. 0.3's default recipe
`v03=head_epochs=40,epochs=45,cache_views=center,tune_patience=0`; `default=split_by=prefix:-` makes the
trainer's own validation split grouped by product too (0.4 after issue 29's refit).

    python -m benchmarks.experiments.recipe_levers ../shared/data/clothing ../shared/data/catalog-photos \\
        --work /tmp/levers --stage levers
    python -m benchmarks.experiments.recipe_levers ../shared/data/clothing ../shared/data/catalog-photos \\
        --work /tmp/levers --stage train --config default=

ECE: expected calibration error of the top-1 probability, 15 equal-width bins (computed here).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import grouped_folds, header, link_tree
from benchmarks.experiments.recipe_cv import parse_config

ARCHS = {"lite0": "timm/tf_efficientnet_lite0", "lite2": "timm/tf_efficientnet_lite2"}
# the views whose features are computed per backbone (Lite2 costs 3x: the two that matter most)
ARCH_VIEWS = {"lite0": ("center", "flip", "wide", "wide-flip", "zoom"), "lite2": ("center", "flip")}
HEAD_VIEWS = ("center", "center,flip", "center,flip,wide,wide-flip", "center,flip,wide,wide-flip,zoom")


def ece(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top-1 probability (equal-width bins)."""
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = (predicted == labels).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    predicted = probs.argmax(axis=1)
    return {
        "acc": float((predicted == labels).mean()),
        "f1": float(f1_score(labels, predicted, average="macro")),
        "ece": ece(labels, probs),
    }


# -- the levers stage: cached features ------------------------------------------------------------


def view_features(root: Path, arch: str, views: tuple[str, ...], work: Path) -> dict[str, Any]:
    """Pooled features [N, V, D] of every photo under every view, cached in WORK."""
    import torch
    from skutag.trainer.augment import Normalizer
    from skutag.trainer.data import CatalogDataset, find_labelled
    from skutag.trainer.features import extract_features, split_head
    from skutag.trainer.model import build
    from skutag.trainer.views import ViewsDataset, flat_views
    from torch.utils.data import DataLoader

    path = work / f"features-{root.name}-{arch.split('/')[-1]}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    samples = find_labelled(root)
    classes = sorted({s.label for s in samples})
    built = build(arch, len(classes), "imagenet")
    card = built.preprocessing.card(arch, tuple(classes))
    base = CatalogDataset(samples, {c: i for i, c in enumerate(classes)}, card)
    loader = DataLoader(ViewsDataset(base, views), batch_size=16, num_workers=1)
    body, _ = split_head(built.model)
    start = time.perf_counter()
    cache = extract_features(body, flat_views(loader), Normalizer(card))
    seconds = time.perf_counter() - start
    n = len(samples)
    result = {
        "features": cache.features.reshape(n, len(views), -1),
        "labels": cache.labels.reshape(n, len(views))[:, 0].numpy(),
        "paths": [str(Path(s.path).resolve()) for s in samples],
        "views": views,
        "classes": classes,
        "seconds_per_image_view": seconds / (n * len(views)),
        "image_size": card.image_size,
    }
    torch.save(result, path)
    return result


def train_head(x, y, val_x, val_y, classes: int, epochs: int = 40, seed: int = 0):
    """The trainer's head phase on features: returns the head of the best val macro F1 epoch."""
    import copy

    import torch
    from sklearn.metrics import f1_score

    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    steps = epochs * -(-len(x) // 32)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * min(1.0, s / steps))))
    g = torch.Generator().manual_seed(seed)
    best, best_f1 = None, -1.0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), 32):
            take = order[start : start + 32]
            loss = torch.nn.functional.cross_entropy(head(x[take]), y[take], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            f1 = f1_score(val_y.numpy(), head(val_x).argmax(1).numpy(), average="macro")
        if f1 > best_f1:
            best, best_f1 = copy.deepcopy(head), f1
    return best


def levers(
    roots: list[Path], work: Path, k: int, seed: int, cached_only: bool = False
) -> list[dict[str, Any]]:
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from skutag.trainer.features import CachedFeatures
    from skutag.trainer.head_fit import fit_logistic

    torch.set_num_threads(1)  # heads and regressions are tiny: one thread, one process
    rows = []
    for root in roots:
        splits = grouped_folds(root, k, seed)
        for short, arch in ARCHS.items():
            if cached_only and not (work / f"features-{root.name}-{arch.split('/')[-1]}.pt").exists():
                print(f"skipped {root.name} {short}: its features are not cached (--cached-only)", flush=True)
                continue
            torch.set_num_threads(os.cpu_count() or 1)
            data = view_features(root, arch, ARCH_VIEWS[short], work)
            torch.set_num_threads(1)
            position = {path: i for i, path in enumerate(data["paths"])}
            feats, labels, views = data["features"], data["labels"], data["views"]
            n_classes = len(data["classes"])
            results: dict[str, list[dict[str, float]]] = {}

            def add(
                name: str, fold_labels: np.ndarray, probs: np.ndarray, seconds: float, into: dict = results
            ) -> None:
                into.setdefault(name, []).append(scores(fold_labels, probs) | {"seconds": seconds})

            for train_files, test_files in splits:
                a = np.array([position[str(f.resolve())] for f in train_files])
                b = np.array([position[str(f.resolve())] for f in test_files])
                center, flip = views.index("center"), views.index("flip")
                start = time.perf_counter()
                model = LogisticRegression(max_iter=5000).fit(feats[a, center].numpy(), labels[a])
                seconds = time.perf_counter() - start
                add("logreg", labels[b], model.predict_proba(feats[b, center].numpy()), seconds)
                tta = (
                    model.predict_proba(feats[b, center].numpy())
                    + model.predict_proba(feats[b, flip].numpy())
                ) / 2
                add("logreg+tta", labels[b], tta, seconds)
                inner, val = train_test_split(a, test_size=0.2, random_state=seed, stratify=labels[a])
                for names in [v for v in HEAD_VIEWS if set(v.split(",")) <= set(views)]:
                    picked = [views.index(v) for v in names.split(",")]
                    x = feats[inner][:, picked].flatten(0, 1)
                    y = torch.from_numpy(labels[inner]).repeat_interleave(len(picked))
                    start = time.perf_counter()
                    head = train_head(x, y, feats[val, center], torch.from_numpy(labels[val]), n_classes)
                    seconds = time.perf_counter() - start
                    with torch.no_grad():
                        probs = torch.softmax(head(feats[b, center]), 1).numpy()
                        flipped = torch.softmax(head(feats[b, flip]), 1).numpy()
                    add(f"head[{names}]", labels[b], probs, seconds)
                    add(f"head[{names}]+tta", labels[b], (probs + flipped) / 2, seconds)
                    # the trainer's default head solver: the logistic regression's optimum on the same 80%
                    head = torch.nn.Linear(x.shape[1], n_classes)
                    cache = CachedFeatures(x, y, torch.arange(len(y)), {})
                    seconds = fit_logistic(head, cache).seconds
                    with torch.no_grad():
                        probs = torch.softmax(head(feats[b, center]), 1).numpy()
                        flipped = torch.softmax(head(feats[b, flip]), 1).numpy()
                    add(f"lbfgs[{names}]", labels[b], probs, seconds)
                    add(f"lbfgs[{names}]+tta", labels[b], (probs + flipped) / 2, seconds)
            for name, folds in results.items():
                row = {"data": root.name, "arch": short, "recipe": name, "folds": folds}
                row["backbone_s_per_image_view"] = data["seconds_per_image_view"]
                row["image_size"] = data["image_size"]
                rows.append(row)
                print(table_row(row), flush=True)
    return rows


# -- the train stage: whole skutag train runs -----------------------------------------------------


def held_out(run: Path, files: list[Path], root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, probs, flipped probs) of the run's best weights on `files`."""
    import torch
    from skutag.trainer.augment import Normalizer
    from skutag.trainer.data import CatalogDataset, Sample
    from skutag.trainer.model import build, read_state_dict
    from skutag.trainer.weights import BEST
    from torch.utils.data import DataLoader

    from skutag.card import ModelCard

    card = ModelCard.load(run / "card.json")
    model = build(card.arch, len(card.classes), "none").model
    model.load_state_dict(read_state_dict(run / BEST))
    model.eval()
    root = root.resolve()
    samples = [Sample(str(f.resolve()), f.resolve().relative_to(root).parts[0]) for f in files]
    dataset = CatalogDataset(samples, {c: i for i, c in enumerate(card.classes)}, card)
    normalizer = Normalizer(card)
    labels, probs, flipped = [], [], []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=32):
            x = normalizer(batch["image"])
            probs.append(torch.softmax(model(x), 1))
            flipped.append(torch.softmax(model(torch.flip(x, [3])), 1))
            labels.append(batch["label"])
    return torch.cat(labels).numpy(), torch.cat(probs).numpy(), torch.cat(flipped).numpy()


def train_runs(roots: list[Path], configs: list[str], k: int, seed: int) -> list[dict[str, Any]]:
    import csv

    from skutag.trainer.config import TrainConfig
    from skutag.trainer.train import train as run_training

    rows = []
    for root in roots:
        splits = grouped_folds(root, k, seed)
        for text in configs:
            name, fields = parse_config(text)
            results: list[dict[str, float]] = []
            tta: list[dict[str, float]] = []
            for i, (train_files, test_files) in enumerate(splits):
                with tempfile.TemporaryDirectory(prefix="skutag-levers-") as tmp:
                    work = Path(tmp)
                    data = link_tree(root, train_files, work / "train")
                    config = TrainConfig(
                        data=str(data),
                        out=str(work / "run"),
                        val_split=0.2,
                        gradcam=False,
                        workers=1,
                        **fields,
                    )
                    start = time.perf_counter()
                    run_training(config)
                    seconds = time.perf_counter() - start
                    with open(work / "run" / "history.csv", newline="") as handle:
                        history = list(csv.DictReader(handle))
                    metrics = json.loads((work / "run" / "metrics.json").read_text())
                    labels, probs, flipped = held_out(work / "run", test_files, root)
                head_epochs = config.resolved_head_epochs()
                tune = [float(r["seconds"]) for r in history[head_epochs:]]
                extra = {
                    "seconds": seconds,
                    "epochs_run": len(history),
                    "tune_epochs": len(tune),
                    "tune_s_per_epoch": statistics.fmean(tune) if tune else 0.0,
                    "head_s_per_epoch": statistics.fmean(float(r["seconds"]) for r in history[:head_epochs])
                    if head_epochs
                    else 0.0,
                    "best_epoch": metrics["best_epoch"],
                    "tuned": metrics["best_epoch"] > head_epochs,
                    "refit": metrics.get("refit") is not None,
                }
                results.append(scores(labels, probs) | extra)
                tta.append(scores(labels, (probs + flipped) / 2) | extra)
                print(f"{root.name} {name} fold {i + 1}/{len(splits)}: {results[-1]}", flush=True)
            for recipe, folds in ((name, results), (name + "+tta", tta)):
                row = {
                    "data": root.name,
                    "arch": fields.get("arch", "default"),
                    "recipe": recipe,
                    "folds": folds,
                }
                rows.append(row)
                print(table_row(row), flush=True)
    return rows


# -- the table ------------------------------------------------------------------------------------

TABLE_HEAD = (
    "| data | backbone | recipe | held-out acc (worst fold) | macro F1 | ECE | training s per fold | notes |\n"
    "|---|---|---|---|---|---|---|---|"
)


def table_row(row: dict[str, Any]) -> str:
    folds = row["folds"]
    acc = [f["acc"] for f in folds]
    mean = lambda key: statistics.fmean(f[key] for f in folds)  # noqa: E731
    notes = ""
    if "tune_epochs" in folds[0]:
        notes = (
            f"epochs {mean('epochs_run'):.1f}, fine-tuning epochs {mean('tune_epochs'):.1f} "
            f"({mean('tune_s_per_epoch'):.1f} s each), head epoch {mean('head_s_per_epoch'):.2f} s, "
            f"best epoch a fine-tuning one in {sum(f['tuned'] for f in folds)} of {len(folds)} folds, "
            f"head refitted on train + validation in {sum(f.get('refit', False) for f in folds)}"
        )
    elif "backbone_s_per_image_view" in row:
        notes = f"backbone {row['backbone_s_per_image_view'] * 1000:.0f} ms per image-view at {row['image_size']} px"
    return (
        f"| {row['data']} | {row['arch']} | {row['recipe']} | {statistics.fmean(acc):.3f} ({min(acc):.3f}) "
        f"| {mean('f1'):.3f} | {mean('ece'):.3f} | {mean('seconds'):.1f} | {notes} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, nargs="+", help="ImageFolder trees (one class per folder)")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--stage", choices=("levers", "train"), required=True)
    parser.add_argument("--config", action="append", default=[], help="train stage: NAME=field=value,...")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cached-only", action="store_true", help="levers: only backbones whose features exist"
    )
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    before = os.getloadavg()[0]
    print(TABLE_HEAD, flush=True)
    if args.stage == "levers":
        rows = levers(args.data, args.work, args.folds, args.seed, args.cached_only)
    else:
        rows = train_runs(args.data, args.config, args.folds, args.seed)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (args.work / f"{args.stage}-{stamp}.json").write_text(json.dumps(rows, indent=1, default=str))
    print("\n" + header("torch", "timm", "scikit-learn", before=before))
    print("\n".join([TABLE_HEAD, *map(table_row, rows)]))


if __name__ == "__main__":
    main()
