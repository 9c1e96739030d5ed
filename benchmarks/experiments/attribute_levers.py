"""Which features should the attribute heads read? Colour statistics beside 0.3 x the pooled ones (RESULTS.md, "Attribute heads"; issue 30).

One pass of the frozen backbone over the manifest (eval preprocessing) keeps, per photo, the final
pooled features (what the label head reads), the global average of every stage's output
(`blocks.0` .. `blocks.6`: early stages keep colour) and simple colour statistics of the pixels
(trainer.taps: per-channel mean and std, a soft RGB histogram, of the centre crop). Then, for each
candidate set of features, a logistic regression per attribute (C = 1 as the trainer's L-BFGS heads,
class-balanced; each feature group standardised, times its weight: `0.3 pooled` is the trainer's
POOLED_WEIGHT) is scored on the held-out fold: accuracy (single) or mAP (multi), mean and worst fold.
The standardisation uses every photo's features (no labels): a small optimism shared by every set.

    OMP_NUM_THREADS=1 python -m benchmarks.experiments.attribute_levers ../shared/data/catalog-photos/attributes.csv
"""

from __future__ import annotations

import argparse
import csv
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import header, load_average


def extract(manifest: Path, rows: list[dict], arch: str, cache: Path) -> dict[str, np.ndarray]:
    if cache.exists():
        return dict(np.load(cache))
    import torch
    from skutag.trainer.augment import Normalizer
    from skutag.trainer.data import CatalogDataset, Sample
    from skutag.trainer.features import split_head
    from skutag.trainer.model import build
    from skutag.trainer.taps import StageTaps, colour_statistics
    from torch.utils.data import DataLoader

    classes = sorted({r["label"] for r in rows})
    built = build(arch, len(classes), "imagenet")
    card = built.preprocessing.card(arch, tuple(classes))
    samples = [Sample(str((manifest.parent / r["path"]).resolve()), r["label"]) for r in rows]
    body, _ = split_head(built.model)
    body.eval()
    names = [f"blocks.{i}" for i in range(len(built.model.blocks))]
    taps = StageTaps(body, names)
    stages: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    normalizer = Normalizer(card)
    pooled, colour = [], []
    loader = DataLoader(CatalogDataset(samples, {c: i for i, c in enumerate(classes)}, card), batch_size=32)
    with torch.no_grad():
        for batch in loader:
            x = normalizer(batch["image"])
            pooled.append(body(x))
            for name in names:
                stages[name].append(taps.pooled.pop(name))
            colour.append(colour_statistics(x, normalizer.mean, normalizer.std))
    taps.close()
    out = {"pooled": torch.cat(pooled).numpy(), "colour": torch.cat(colour).numpy()}
    out.update((k, torch.cat(v).numpy()) for k, v in stages.items())
    np.savez(cache, **out)
    return out


def standardised(feats: dict[str, np.ndarray], part: str) -> np.ndarray:
    """A feature group standardised over all photos, times its weight (`0.3*pooled`: weight 0.3)."""
    weight, _, name = part.rpartition("*")
    x = feats[name][:, feats[name].std(0) > 1e-6]
    return (x - x.mean(0)) / x.std(0) * (float(weight) if weight else 1.0)


def score(x: np.ndarray, rows: list[dict], folds, name: str) -> list[float]:
    """Per fold: accuracy (single) or mAP (multi: the values with positives on both sides)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score

    cells = [r[name] for r in rows]
    figures = []
    for train, val in folds:
        if name not in MULTI:
            t, v = [i for i in train if cells[i]], [i for i in val if cells[i]]
            model = LogisticRegression(max_iter=500, class_weight="balanced").fit(x[t], [cells[i] for i in t])
            figures.append(float((model.predict(x[v]) == np.array([cells[i] for i in v])).mean()))
            continue
        values = sorted({v for c in cells for v in c.split("|") if v})
        y = np.array([[v in c.split("|") for v in values] for c in cells])
        aps = []
        for j in range(len(values)):
            yt, yv = y[train, j], y[val, j]
            if yt.all() or not yt.any() or not yv.any():
                continue
            model = LogisticRegression(max_iter=500, class_weight="balanced").fit(x[train], yt)
            aps.append(average_precision_score(yv, model.predict_proba(x[val])[:, 1]))
        figures.append(float(np.mean(aps)))
    return figures


MULTI = ("style", "material", "climate")
SETS = {
    "pooled (baseline)": ["pooled"],
    "colour statistics alone": ["colour"],
    "blocks.1..2 + colour": ["blocks.1", "blocks.2", "colour"],
    "pooled + colour": ["pooled", "colour"],
    "0.3 pooled + colour (built)": ["0.3*pooled", "colour"],
    "0.1 pooled + colour": ["0.1*pooled", "colour"],
    "pooled + blocks.1..4": ["pooled", "blocks.1", "blocks.2", "blocks.3", "blocks.4"],
    "pooled + blocks.1..2 + colour": ["pooled", "blocks.1", "blocks.2", "colour"],
    "0.3 pooled + blocks.1..2 + colour": ["0.3*pooled", "blocks.1", "blocks.2", "colour"],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--attributes", default="label,color,pattern,style")
    parser.add_argument("--arch", default="timm/tf_efficientnet_lite0")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/skutag-attribute-levers-v2.npz"))
    args = parser.parse_args(argv)
    from skutag.trainer.groups import grouped_folds

    before = load_average()
    start, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    with open(args.manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    feats = extract(args.manifest, rows, args.arch, args.cache)
    products = [Path(r["path"]).name.split("-")[0] for r in rows]
    folds = grouped_folds([r["label"] for r in rows], products, args.folds, 0)
    names = args.attributes.split(",")
    lines = [header("torch", "timm", "sklearn", before=before), ""]
    lines.append("| features | dims | " + " | ".join(f"{n} mean (worst)" for n in names) + " |")
    lines.append("|---" * (len(names) + 2) + "|")
    for label, parts in SETS.items():
        x = np.concatenate([standardised(feats, p) for p in parts], axis=1)
        cells = []
        for name in names:
            f = score(x, rows, folds, name)
            cells.append(f"{statistics.fmean(f):.3f} ({min(f):.3f})")
        line = f"| {label} | {x.shape[1]} | " + " | ".join(cells) + " |"
        print(line, flush=True)
        lines.append(line)
    end = resource.getrusage(resource.RUSAGE_SELF)
    cpu = end.ru_utime - usage.ru_utime + end.ru_stime - usage.ru_stime
    lines.append("")
    lines.append(
        f"wall {time.perf_counter() - start:.0f} s, CPU {cpu:.0f} s; load average {before:.2f} -> {load_average():.2f}"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
