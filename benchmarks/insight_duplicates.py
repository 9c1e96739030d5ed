"""Near-duplicate precision and recall on real photos with planted copies.

For each photo set: train the repo's offline recipe (resnet18, --weights none, --adapt-bn,
frozen backbone, cached features; no ImageNet weights exist offline), export it with
embeddings, plant a resized, a recompressed and a cropped copy of every 4th photo, run the
catalog, index it, calibrate the threshold on the copies of half the originals (vs all
distinct pairs) and score `duplicate_groups` on the other half: pairwise precision and recall.

    python -m benchmarks.insight_duplicates /work/shared/data/catalog-photos /work/shared/data/clothing --work DIR
"""

from __future__ import annotations

import argparse
import itertools
import shutil
from pathlib import Path

import numpy as np
from skutag.insight.duplicates import calibrate_threshold, duplicate_groups
from skutag.insight.index import build_index

from skutag.images import is_image_path
from tests.insight_catalog import COPY_KINDS, plant_copies


def one_set(photos: Path, work: Path) -> dict:
    from skutag.batchrun.api import run_catalog
    from skutag.batchrun.options import RunOptions
    from skutag.exporter.graph import export_fp32
    from skutag.trainer.config import TrainConfig
    from skutag.trainer.train import train
    from skutag.trainer.weights import load_trained

    work.mkdir(parents=True, exist_ok=True)
    run = work / "run"
    if not (run / "card.json").exists():
        shutil.rmtree(run, ignore_errors=True)
        train(
            TrainConfig(
                data=str(photos),
                out=str(run),
                arch="resnet18",
                weights="none",
                freeze="backbone",
                cache_features=True,
                augment="none",
                adapt_bn=True,
                epochs=5,
                lr=1e-2,
                val_split=0.2,
                image_size=224,
                batch_size=32,
                seed=0,
            )  # fmt: skip
        )
    model_path = work / "model.onnx"
    model, card = load_trained(run)
    export_fp32(model.eval(), card, model_path, embeddings=True)
    catalog = work / "catalog"
    shutil.rmtree(catalog, ignore_errors=True)
    shutil.copytree(photos, catalog, ignore=shutil.ignore_patterns("LICENSE*", "*.md"))
    images = sorted(p for p in catalog.rglob("*") if is_image_path(p))
    groups = plant_copies(catalog, images[::4], [])
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    run_catalog(model_path, [str(catalog)], str(out), RunOptions(embeddings=True))
    index = build_index([str(out)], work / "index")
    ids = index.rows.column("id").to_pylist()
    where = {i: n for n, i in enumerate(ids)}
    vectors = index.vectors(np.arange(len(ids)))
    distance = 1 - vectors @ vectors.T
    originals = sorted(groups)
    calibration, held_out = originals[::2], originals[1::2]
    group_of = {m: g for g, o in enumerate(originals) for m in groups[o]}
    labels = np.array([group_of.get(i, -1 - n) for n, i in enumerate(ids)])
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    calib_rows = np.array([where[m] for o in calibration for m in groups[o]])
    copy_d = [distance[where[o], where[m]] for o in calibration for m in groups[o] if m != o]
    mask = ~same[np.ix_(calib_rows, np.arange(len(ids)))]
    mask[np.arange(len(calib_rows)), calib_rows] = False
    distinct_d = distance[calib_rows][mask]
    threshold = calibrate_threshold(np.array(copy_d), distinct_d)
    found = duplicate_groups(index, threshold)
    found_pairs = set()
    for members in found.group_by("group").aggregate([("id", "list")]).column("id_list").to_pylist():
        found_pairs |= {frozenset(p) for p in itertools.combinations(members, 2)}
    held_ids = {m for o in held_out for m in groups[o]}
    calib_ids = {m for o in calibration for m in groups[o]}
    planted = {frozenset(p) for o in held_out for p in itertools.combinations(sorted(groups[o]), 2)}
    judged = {p for p in found_pairs if not p & calib_ids}  # pairs that touch no calibration photo
    result = {
        "set": photos.name,
        "photos": len(images),
        "originals": len(originals),
        "threshold": threshold,
        "precision": len(judged & planted) / max(1, len(judged)),
        "recall": len(planted & found_pairs) / len(planted),
    }
    for kind in COPY_KINDS:
        pairs = {p for p in planted if any(kind in m for m in p) and sum(kind in m for m in p) == 1}
        pairs = {p for p in pairs if all(m in held_ids for m in p)}
        result[f"recall_{kind}"] = len(pairs & found_pairs) / max(1, len(pairs))
    result["copy_distance_max"] = float(max(copy_d))
    result["distinct_distance_p001"] = float(np.quantile(distinct_d, 0.001))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sets", nargs="+", type=Path)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    rows = [one_set(s, args.work / s.name) for s in args.sets]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
