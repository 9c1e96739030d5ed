"""Which features should the attribute heads read? Frozen Lite0 features, 5 folds by product (issue 30).

One pass of the frozen backbone over the manifest (eval preprocessing) keeps, per photo, the final
pooled features (what the label head reads), the global average of every stage's output
(`blocks.0` .. `blocks.6`: early stages keep colour) and simple colour statistics of the pixels
(trainer.taps: per-channel mean and std, a soft RGB histogram, of the centre crop). Then, for each
candidate set of features, a logistic regression per attribute (C = 1, as the trainer's L-BFGS heads;
the features standardised on the training fold, as trainer.multihead's attribute input) is scored
on the held-out fold: accuracy (single) or mAP (multi), mean and worst fold.

    python -m benchmarks.experiments.attribute_levers ../shared/data/catalog-photos/attributes.csv
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
    from skutag.trainer.taps import colour_statistics
    from torch.utils.data import DataLoader

    from skutag.card import ModelCard

    classes = sorted({r["label"] for r in rows})
    built = build(arch, len(classes), "imagenet")
    p = built.preprocessing
    card = ModelCard(
        arch=arch, classes=tuple(classes), image_size=p.image_size, resize_size=p.resize_size(p.image_size),
        normalize=p.normalize, mean=p.mean, std=p.std, interpolation=p.interpolation,
    )  # fmt: skip
    samples = [Sample(str((manifest.parent / r["path"]).resolve()), r["label"]) for r in rows]
    body, _ = split_head(built.model)
    body.eval()
    stages: dict[str, list[torch.Tensor]] = {}
    blocks = built.model.blocks
    for i, block in enumerate(blocks):
        block.register_forward_hook(
            lambda _m, _i, out, name=f"blocks.{i}": stages.setdefault(name, []).append(out.mean((2, 3)))
        )
    normalizer = Normalizer(card)
    pooled, colour = [], []
    loader = DataLoader(CatalogDataset(samples, {c: i for i, c in enumerate(classes)}, card), batch_size=32)
    with torch.no_grad():
        for batch in loader:
            x = normalizer(batch["image"])
            pooled.append(body(x))
            colour.append(colour_statistics(x, normalizer.mean, normalizer.std))
    out = {"pooled": torch.cat(pooled).numpy(), "colour": torch.cat(colour).numpy()}
    out.update((k, torch.cat(v).numpy()) for k, v in stages.items())
    np.savez(cache, **out)
    return out


def score(x: np.ndarray, rows: list[dict], folds, name: str, standardise: bool) -> list[float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score

    figures = []
    for train, val in folds:
        xt, xv = x[train], x[val]
        if standardise:
            mean, std = xt.mean(0), xt.std(0) + 1e-6
            xt, xv = (xt - mean) / std, (xv - mean) / std
        cells = [rows[i][name] for i in range(len(rows))]
        multi = name in ("style", "material", "climate")
        if not multi:
            t = [i for i in train if cells[i]]
            v = [i for i in val if cells[i]]
            xt2 = (x[t] - mean) / std if standardise else x[t]
            xv2 = (x[v] - mean) / std if standardise else x[v]
            m = LogisticRegression(max_iter=3000, class_weight="balanced").fit(xt2, [cells[i] for i in t])
            figures.append(float((m.predict(xv2) == np.array([cells[i] for i in v])).mean()))
        else:
            values = sorted({v for c in cells for v in c.split("|") if v})
            y = np.array([[v in cells[i].split("|") for v in values] for i in range(len(rows))])
            aps = []
            for j in range(len(values)):
                yt, yv = y[train, j], y[val, j]
                if yt.all() or not yt.any() or not yv.any():
                    continue
                m = LogisticRegression(max_iter=3000, class_weight="balanced").fit(xt, yt)
                aps.append(average_precision_score(yv, m.predict_proba(xv)[:, 1]))
            figures.append(float(np.mean(aps)))
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--attributes", default="label,color,pattern,style")
    parser.add_argument("--arch", default="timm/tf_efficientnet_lite0")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/skutag-attribute-levers.npz"))
    parser.add_argument("--sets", default="")
    args = parser.parse_args(argv)
    from skutag.trainer.groups import grouped_folds

    before = load_average()
    start, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    with open(args.manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    feats = extract(args.manifest, rows, args.arch, args.cache)
    products = [Path(r["path"]).name.split("-")[0] for r in rows]
    folds = grouped_folds([r["label"] for r in rows], products, args.folds, 0)
    sets = {
        "pooled": ["pooled"],
        "pooled+colour": ["pooled", "colour"],
        "pooled+b2..b4": ["pooled", "blocks.2", "blocks.3", "blocks.4"],
        "pooled+b1..b4": ["pooled", "blocks.1", "blocks.2", "blocks.3", "blocks.4"],
        "pooled+b1..b4+colour": ["pooled", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "colour"],
        "pooled+b0..b6": ["pooled", *[f"blocks.{i}" for i in range(7)]],
        "pooled+b0..b6+colour": ["pooled", *[f"blocks.{i}" for i in range(7)], "colour"],
        "pooled+b3..b5+colour": ["pooled", "blocks.3", "blocks.4", "blocks.5", "colour"],
    }
    if args.sets:
        sets = {k: v for k, v in sets.items() if k in args.sets.split(";")}
    names = args.attributes.split(",")
    lines = [header("torch", "timm", "sklearn", before=before), ""]
    lines.append(
        "| features | dims | standardised | " + " | ".join(f"{n} mean (worst)" for n in names) + " |"
    )
    lines.append("|---" * (len(names) + 3) + "|")
    for label, parts in sets.items():
        x = np.concatenate([feats[p] for p in parts], axis=1)
        for standardise in (False, True):
            cells = []
            for name in names:
                f = score(x, rows, folds, name, standardise)
                cells.append(f"{statistics.fmean(f):.3f} ({min(f):.3f})")
            line = (
                f"| {label} | {x.shape[1]} | {'yes' if standardise else 'no'} | " + " | ".join(cells) + " |"
            )
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
