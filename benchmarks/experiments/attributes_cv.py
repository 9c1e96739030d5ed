"""Is one multi-head model within 1 point of one model per attribute, at half their cost? Yes, at a third (frozen features; RESULTS.md, "Attribute heads"; issue 30).

k-fold cross-validation split by product (the file name before the first `-`, trainer.groups) on a
manifest in the shape of `catalog-photos/attributes.csv`. Per fold, through `trainer.train.train`
(the code `skutag train --attributes` runs), the held-out fold is the validation split:
- `multi`: one model, the label head and a head per attribute;
- `separate`: one model per attribute (`--attributes NAME`: its label head is the category's
  single model too, whose figure is the first model's), their training times summed;
- `logreg`: scikit-learn's logistic regression (one-vs-rest for a multi-valued attribute) on the
  frozen backbone's pooled features (eval preprocessing), photos without a value left out.
Reported per attribute: accuracy (single) or mAP (multi), mean and worst fold; per approach the total
training and inference (the held-out photos through the trained model, every head) seconds over all
folds, wall and CPU (user + sys of this process and its reaped children: DataLoader workers), with
the load average before and after. `--jsonl` keeps each fold's figures as it finishes. The held-out fold also picks the
best epoch and the thresholds (as recipe_cv does), so the figures are optimistic alike for every
approach except logreg.

    python -m benchmarks.experiments.attributes_cv ../shared/data/catalog-photos/attributes.csv \\
        --attributes color,pattern,style --folds 5
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import header, load_average
from skutag.fsio import atomic_write_text


def fold_manifest(manifest: Path, rows: list[dict], val: set[int], out: Path) -> Path:
    """The manifest with absolute paths and a split column: the fold's held-out rows are `val`."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "fold.csv"
    names = [n for n in rows[0] if n != "split"] + ["split"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, names)
        writer.writeheader()
        for i, row in enumerate(rows):
            absolute = str((manifest.parent / row["path"]).resolve())
            writer.writerow({**row, "path": absolute, "split": "val" if i in val else "train"})
    return path


def figure(entry: dict) -> float:
    return entry["map"] if "confusion" not in entry else entry["accuracy"]


def cpu_seconds() -> float:
    """user + sys of this process and its reaped children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Clock:
    """Wall and CPU seconds of a block, added to `totals[key]` (a [wall, cpu] pair)."""

    def __init__(self, totals: dict[str, list[float]], key: str) -> None:
        self.totals, self.key = totals, key

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        pair = self.totals.setdefault(self.key, [0.0, 0.0])
        pair[0] += time.perf_counter() - self.wall
        pair[1] += cpu_seconds() - self.cpu


def train_once(data: Path, out: Path, attributes: str, fields: dict) -> dict:
    from skutag.trainer.config import TrainConfig
    from skutag.trainer.train import train

    train(TrainConfig(data=str(data), out=str(out), attributes=attributes, gradcam=False, **fields))
    return json.loads((out / "metrics.json").read_text())


def infer(run: Path, data: Path) -> None:
    """Every held-out photo through the run's model, every head (decode included), batch 32."""
    import torch
    from skutag.trainer.augment import Normalizer
    from skutag.trainer.data import CatalogDataset, find_splits
    from skutag.trainer.weights import load_trained
    from torch.utils.data import DataLoader

    model, card = load_trained(run, torch.device("cpu"))
    splits = find_splits(data, val_dir=None, val_split=None, seed=0)
    index = {c: i for i, c in enumerate(card.classes)}
    normalizer = Normalizer(card)
    with torch.inference_mode():
        for batch in DataLoader(CatalogDataset(splits.val, index, card), batch_size=32):
            model(normalizer(batch["image"]), all_heads=True)


def logreg(data: Path, names: list[str], fields: dict) -> tuple[dict[str, float], float, float]:
    """(figure per attribute, the category's accuracy, seconds) of logistic regressions on frozen features."""
    from sklearn.linear_model import LogisticRegression as Plain
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from skutag.trainer.attributes import AttributeSpec, decide_heads, encode, read_attributes
    from skutag.trainer.augment import Normalizer
    from skutag.trainer.data import CatalogDataset, find_splits
    from skutag.trainer.features import extract_features, split_head
    from skutag.trainer.head_metrics import mean_average_precision
    from skutag.trainer.model import build
    from torch.utils.data import DataLoader

    def LogisticRegression(**kwargs):  # noqa: N802 - standardised: converges in far fewer iterations
        return make_pipeline(StandardScaler(), Plain(**kwargs))

    start = time.perf_counter()
    splits = find_splits(data, val_dir=None, val_split=None, seed=0)
    built = build(fields["arch"], len(splits.classes), fields["weights"])
    card = built.preprocessing.card(fields["arch"], tuple(splits.classes))
    body, _ = split_head(built.model)
    normalizer = Normalizer(card)
    index = {c: i for i, c in enumerate(splits.classes)}

    def features(samples):
        loader = DataLoader(
            CatalogDataset(samples, index, card), batch_size=32, num_workers=fields["workers"]
        )
        cache = extract_features(body, loader, normalizer)
        return cache.features.numpy(), cache.labels.numpy(), cache.indices.numpy()

    xt, yt, it = features(splits.train)
    xv, yv, iv = features(splits.val)
    category = float((LogisticRegression(max_iter=2000).fit(xt, yt).predict(xv) == yv).mean())
    table = read_attributes(data, [AttributeSpec(n) for n in names])
    heads = decide_heads([AttributeSpec(n) for n in names], [s.path for s in splits.train], table)
    figures = {}
    for head in heads:
        train = encode(head, [splits.train[i].path for i in it], table)
        val = encode(head, [splits.val[i].path for i in iv], table)
        if head.kind == "single":
            model = LogisticRegression(max_iter=2000).fit(xt[train.mask], train.targets[train.mask])
            predicted = model.classes_[model.predict_proba(xv[val.mask]).argmax(axis=1)]
            figures[head.name] = float((predicted == val.targets[val.mask]).mean())
        else:
            y = train.targets[train.mask]
            keep = y.any(axis=0) & ~y.all(axis=0)  # values with both kinds of photo in training
            model = OneVsRestClassifier(LogisticRegression(max_iter=2000)).fit(xt[train.mask], y[:, keep])
            probs = np.zeros((int(val.mask.sum()), y.shape[1]))
            probs[:, keep] = model.predict_proba(xv[val.mask])
            figures[head.name] = mean_average_precision(val.targets[val.mask] > 0.5, probs)
    return figures, category, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path, help="path,label,<attribute>... (values joined by |)")
    parser.add_argument("--attributes", default="color,pattern,style")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only-folds", type=int, help="run only the first N folds (a smoke run)")
    parser.add_argument("--epochs", type=int, help="TrainConfig.epochs (default: its own)")
    parser.add_argument(
        "--cache-features",
        action="store_true",
        help="TrainConfig.cache_features (and augment none): the head phase alone (frozen)",
    )
    parser.add_argument("--arch", default="timm/tf_efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--jsonl", type=Path, help="append each fold's figures and seconds here as it ends")
    args = parser.parse_args(argv)

    from skutag.trainer.groups import grouped_folds

    with open(args.manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    products = [Path(r["path"]).name.split("-")[0] for r in rows]
    splits = grouped_folds([r["label"] for r in rows], products, args.folds, args.seed)[: args.only_folds]
    names = [n.split(":")[0] for n in args.attributes.split(",")]
    fields = {"arch": args.arch, "weights": args.weights, "workers": args.workers, "seed": args.seed}
    if args.epochs is not None:
        fields["epochs"] = args.epochs
    if args.cache_features:
        fields.update(cache_features=True, augment="none")  # cached features are not augmented
    scores: dict[str, dict[str, list[float]]] = {k: {} for k in ("multi", "separate", "logreg")}
    seconds: dict[str, list[float]] = {}  # "<approach> train" / "<approach> infer" -> [wall, cpu]
    before = load_average()
    for number, (_, val) in enumerate(splits, start=1):
        with tempfile.TemporaryDirectory(prefix="skutag-attr-cv-") as work:
            data = fold_manifest(args.manifest, rows, set(val.tolist()), Path(work))
            with Clock(seconds, "multi train"):
                metrics = train_once(data, Path(work) / "multi", args.attributes, fields)
            with Clock(seconds, "multi infer"):
                infer(Path(work) / "multi", data)
            scores["multi"].setdefault("category", []).append(metrics["accuracy"])
            for name in names:
                scores["multi"].setdefault(name, []).append(figure(metrics["attributes"][name]))
            for i, name in enumerate(names):
                spec = next(s for s in args.attributes.split(",") if s.split(":")[0] == name)
                with Clock(seconds, "separate train"):
                    single = train_once(data, Path(work) / f"one-{name}", spec, fields)
                with Clock(seconds, "separate infer"):
                    infer(Path(work) / f"one-{name}", data)
                scores["separate"].setdefault(name, []).append(figure(single["attributes"][name]))
                if i == 0:
                    scores["separate"].setdefault("category", []).append(single["accuracy"])
            with Clock(seconds, "logreg train"):
                figures, category, _ = logreg(data, names, fields)
            scores["logreg"].setdefault("category", []).append(category)
            for name in names:
                scores["logreg"].setdefault(name, []).append(figures[name])
        record = {"fold": number, "load": load_average(), "scores": scores, "seconds": seconds}
        if args.jsonl:
            with open(args.jsonl, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        print(f"fold {number}/{len(splits)} done: {json.dumps(record)}", flush=True)
    after = load_average()
    columns = ["category", *names]
    lines = [header("torch", "timm", "sklearn", before=before), ""]
    lines.append(
        f"{len(splits)} of {args.folds} folds by product, {args.manifest.name}; accuracy (single) or mAP "
        f"(multi) on the held-out fold, mean (worst fold) over folds; load average {before:.1f} -> {after:.1f}; "
        "seconds over all folds, wall / CPU (user + sys)"
    )
    lines.append("")
    lines.append(
        "| approach | " + " | ".join(columns) + " | training s wall / CPU | inference s wall / CPU |"
    )
    lines.append("|---" * (len(columns) + 3) + "|")
    for approach, per in scores.items():
        cells = [f"{statistics.fmean(per[c]):.3f} ({min(per[c]):.3f})" if c in per else "" for c in columns]
        spent = [seconds.get(f"{approach} {k}") for k in ("train", "infer")]
        timing = [f"{p[0]:.0f} / {p[1]:.0f}" if p else "" for p in spent]
        lines.append(f"| {approach} | " + " | ".join(cells) + " | " + " | ".join(timing) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
