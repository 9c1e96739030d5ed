"""Similar products and near duplicates: the index at scale, `--duplicates` at scale, and on real photos.

`index`: build time, memory, queries per second and recall@10 per FAISS index. Synthetic 2048-d
float32 embeddings shaped like pooled ReLU features (non-negative, L2-normalised), generated in
seeded chunks so 1M rows never sit in memory twice: `--data clusters` draws 1,000 cluster centres
plus noise (at 1M rows IVF's 1,000 lists line up with the clusters: easy for IVF); `--data latent`
maps a continuous 32-d Gaussian through a random projection (neighbours without cluster
boundaries: hard for every approximate index). Exact ground truth is computed chunk by chunk with
numpy (no second 8 GB copy). Each index is built once, measured at several search depths (IVF
`nprobe`, HNSW `efSearch`), and freed before the next, so 1M rows of exact + HNSW never share the
memory. Queries per second are for one batch of `--queries` queries (how `skutag similar
--duplicates` and multi-image queries search) and, separately, the median latency of single
queries (how one `skutag similar --id` is answered).

    python -m benchmarks.insight_suite index --rows 100000 [--data clusters|latent] [--kinds flat,ivf,hnsw]

`duplicates`: `skutag similar --duplicates` at catalog scale, time and found planted copies per IVF
`nprobe`. The `latent` embeddings above with `--copies` planted near copies: a row's vector plus
Gaussian noise scaled so the cosine distance to its original is uniform in [0.002, 0.018], under
the 0.02 default threshold, as a resized or recompressed photo's embedding is (the `photos`
figures). The real `insight.duplicates.duplicate_groups` runs on an IVF index built as `skutag
index` builds it; found = groups that are exactly a planted pair; extra = rows of any other group.

    python -m benchmarks.insight_suite duplicates --rows 100000 --nprobe 1,4,79

`photos`: near-duplicate precision and recall on real photos with planted copies. For each photo
set: train the repo's offline recipe (resnet18, --weights none, --adapt-bn, frozen backbone, cached
features; no ImageNet weights exist offline), export it with embeddings, plant a resized, a
recompressed and a cropped copy of every 4th photo, run the catalog, index it, calibrate the
threshold on the copies of half the originals (vs all distinct pairs) and score
`duplicate_groups` on the other half: pairwise precision and recall.

    python -m benchmarks.insight_suite photos ../shared/data/catalog-photos ../shared/data/clothing --work DIR
"""

from __future__ import annotations

import argparse
import gc
import itertools
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from benchmarks.common import COPY_KINDS, header, photos, plant_copies

DIM, CLUSTERS, LATENT, CHUNK, K = 2048, 1000, 32, 50_000, 10
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 40
DATA = {"kind": "clusters"}  # set once by main (--data; `duplicates` uses latent)


def normalize(x: np.ndarray) -> np.ndarray:
    from skutag.insight.index import normalize as unit

    return unit(x)


# -- index: FAISS indexes at scale ------------------------------------------------------------


def chunk(n: int, start: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, start])
    if DATA["kind"] == "latent":
        projection = np.random.default_rng(seed).standard_normal((LATENT, DIM), dtype=np.float32)
        z = rng.standard_normal((n, LATENT), dtype=np.float32)
        x = z @ projection / np.sqrt(LATENT) + 0.3 * rng.standard_normal((n, DIM), dtype=np.float32)
        return normalize(np.maximum(x, 0))
    centres = np.random.default_rng(seed).random((CLUSTERS, DIM), dtype=np.float32)
    x = centres[rng.integers(0, CLUSTERS, n)] + 0.5 * rng.standard_normal((n, DIM), dtype=np.float32)
    return normalize(np.maximum(x, 0))


def chunks(rows: int) -> Iterator[np.ndarray]:
    for start in range(0, rows, CHUNK):
        yield chunk(min(CHUNK, rows - start), start)


def exact_topk(queries: np.ndarray, rows: int, k: int = K) -> np.ndarray:
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for start in range(0, rows, CHUNK):
        s = queries @ chunk(min(CHUNK, rows - start), start).T
        idx = np.argpartition(-s, k, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, idx, 1)], 1)
        cand_i = np.concatenate([best_i, idx + start], 1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def rss_gb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return kb * 1024 / 1e9  # VmRSS is in KiB; GB = 10^9 bytes


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth, strict=True)]))


def search_figures(index, queries: np.ndarray, truth: np.ndarray) -> dict:
    """Batch queries/s, median single-query ms and recall@10 at the index's current settings."""
    index.search(queries[:8], K)  # warm
    start = time.perf_counter()
    _, found = index.search(queries, K)
    qps = len(queries) / (time.perf_counter() - start)
    singles = []
    for q in queries[:50]:
        start = time.perf_counter()
        index.search(q[None], K)
        singles.append(time.perf_counter() - start)
    return dict(qps=qps, single_ms=1e3 * float(np.median(singles)), recall=recall_at_k(found, truth))


def build(index, rows: int, train: np.ndarray | None = None) -> dict:
    """Train (if asked) and add `rows` vectors; times and RSS growth (the index's memory)."""
    gc.collect()
    before = rss_gb()
    start = time.perf_counter()
    if train is not None:
        index.train(train)
    trained = time.perf_counter() - start
    for x in chunks(rows):
        index.add(x)
        del x
    gc.collect()
    return dict(build_s=time.perf_counter() - start, train_s=trained, memory_gb=rss_gb() - before)


def ivf_sample(nlist: int) -> np.ndarray:
    """40 training points per list, drawn fresh from the same distribution (what build_index trains on)."""
    size = nlist * 40
    return np.concatenate([chunk(min(CHUNK, size - s), 10**8 + s) for s in range(0, size, CHUNK)])


def measure_kind(kind: str, rows: int, queries: np.ndarray, truth: np.ndarray) -> list[dict]:
    import faiss
    from skutag.insight.index import default_nprobe, ivf_lists

    settings: list[tuple[str, Callable]] = []
    if kind == "flat":
        index = faiss.IndexFlatIP(DIM)
        built = build(index, rows)
        settings = [("IndexFlatIP (exact)", lambda index: None)]
    elif kind == "ivf":
        nlist = ivf_lists(rows)
        index = faiss.index_factory(DIM, f"IVF{nlist},SQfp16", faiss.METRIC_INNER_PRODUCT)
        built = build(index, rows, train=ivf_sample(nlist))
        default = default_nprobe(nlist)
        for nprobe in sorted({max(1, nlist // 32), nlist // 16, nlist // 8, default, nlist // 2}):
            label = f"IVF{nlist},SQfp16 nprobe {nprobe}" + (" (default)" if nprobe == default else "")
            settings.append((label, lambda index, nprobe=nprobe: setattr(index, "nprobe", nprobe)))
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(DIM, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        built = build(index, rows)
        for ef in (16, 32, 64, 128, 256):  # the sweep is cheap next to the build
            label = f"HNSW{HNSW_M},Flat efC {HNSW_EF_CONSTRUCTION} efSearch {ef}"
            settings.append((label, lambda index, ef=ef: setattr(index.hnsw, "efSearch", ef)))
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    results = []
    for label, apply in settings:
        apply(index)
        results.append(dict(built, index=label, rows=rows, **search_figures(index, queries, truth)))
        print(results[-1], flush=True)
    del index
    gc.collect()
    return results


def index_suite(args: argparse.Namespace) -> None:
    import faiss

    DATA["kind"] = args.data
    queries = chunk(args.queries, 10**9)  # fresh points from the same distribution
    start = time.perf_counter()
    truth = exact_topk(queries, args.rows)
    print(f"exact ground truth (numpy, chunked): {time.perf_counter() - start:.1f} s", flush=True)
    results = [r for kind in args.kinds.split(",") for r in measure_kind(kind, args.rows, queries, truth)]
    print(
        header("faiss-cpu", "numpy") + f"- {faiss.omp_get_max_threads()} FAISS threads, --data {args.data}\n"
    )
    print(
        f"| index | rows | build s (of which training) | memory GB | queries/s (batch of {args.queries}) "
        "| single query ms (median) | recall@10 |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['index']} | {r['rows']:,} | {r['build_s']:.1f} ({r['train_s']:.1f}) | {r['memory_gb']:.2f} "
            f"| {r['qps']:.0f} | {r['single_ms']:.1f} | {r['recall']:.3f} |"
        )


# -- duplicates: `--duplicates` at scale -------------------------------------------------------


def planted(vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Near copies of `vectors` at cosine distances uniform in [0.002, 0.018]."""
    dim = vectors.shape[1]
    distance = rng.uniform(0.002, 0.018, len(vectors))
    eps = np.sqrt(2 * distance / dim)  # |noise|^2 / 2 ~ dim * eps^2 / 2 for a unit vector
    return normalize(vectors + eps[:, None] * rng.standard_normal(vectors.shape, dtype=np.float32))


def duplicates_suite(args: argparse.Namespace) -> None:
    import faiss
    import pyarrow as pa
    from skutag.insight.duplicates import DEFAULT_THRESHOLD, duplicate_groups
    from skutag.insight.index import IndexInfo, SimilarityIndex, ivf_lists

    DATA["kind"] = "latent"
    dim, rows = DIM, args.rows
    print(header("faiss-cpu", "numpy"))
    nlist = ivf_lists(rows + args.copies)
    index = faiss.index_factory(dim, f"IVF{nlist},SQfp16", faiss.METRIC_INNER_PRODUCT)
    start = time.perf_counter()
    index.train(ivf_sample(nlist))
    rng = np.random.default_rng(7)
    originals = np.sort(rng.choice(rows, args.copies, replace=False))
    kept = []
    for offset in range(0, rows, CHUNK):
        x = chunk(min(CHUNK, rows - offset), offset)
        index.add(x)
        inside = originals[(originals >= offset) & (originals < offset + len(x))]
        kept.append(x[inside - offset])
    index.add(planted(np.concatenate(kept), rng))
    index.make_direct_map()
    print(f"built IVF{nlist},SQfp16 over {rows + args.copies:,} rows in {time.perf_counter() - start:.0f} s")
    ids = pa.array([f"r{i}" for i in range(rows + args.copies)])
    table = pa.table({"id": ids, "uri": ids, "label": ids, "sha256": pa.nulls(len(ids), pa.string())})
    pairs = {frozenset((f"r{rows + k}", f"r{o}")) for k, o in enumerate(originals)}
    print("| rows | nprobe | seconds | planted pairs found (exact groups) | rows in other groups |")
    print("|---|---|---|---|---|")
    for nprobe in (int(n) for n in args.nprobe.split(",")):
        info = IndexInfo(kind="ivf", dim=dim, rows=len(ids), model_sha256="", card={}, sources=[],
                         nlist=nlist, nprobe=nprobe)  # fmt: skip
        start = time.perf_counter()
        groups = duplicate_groups(SimilarityIndex(index, table, info), DEFAULT_THRESHOLD, nprobe)
        seconds = time.perf_counter() - start
        members: dict[int, set[str]] = {}
        for row_id, group in zip(
            groups.column("id").to_pylist(), groups.column("group").to_pylist(), strict=True
        ):
            members.setdefault(group, set()).add(row_id)
        found = sum(frozenset(m) in pairs for m in members.values())
        extra = sum(len(m) for m in members.values() if frozenset(m) not in pairs)
        print(f"| {len(ids):,} | {nprobe} | {seconds:.0f} | {found}/{len(pairs)} | {extra} |", flush=True)


# -- photos: planted near copies of real photos ---------------------------------------------------


def one_set(photo_set: Path, work: Path) -> dict:
    from skutag.batchrun.api import run_catalog
    from skutag.batchrun.options import RunOptions
    from skutag.exporter.graph import export_fp32
    from skutag.insight.duplicates import calibrate_threshold, duplicate_groups
    from skutag.insight.index import build_index
    from skutag.trainer.config import TrainConfig
    from skutag.trainer.train import train
    from skutag.trainer.weights import load_trained

    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()  # the listing gives absolute paths: ids are relative to the catalog
    run = work / "run"
    if not (run / "card.json").exists():
        shutil.rmtree(run, ignore_errors=True)
        train(
            TrainConfig(
                data=str(photo_set),
                out=str(run),
                arch="resnet18",
                weights="none",
                freeze="backbone",
                cache_features=True,
                head_solver="adam",
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
    shutil.copytree(photo_set, catalog, ignore=shutil.ignore_patterns("LICENSE*", "*.md"))
    images = photos(catalog)
    groups = plant_copies(catalog, images[::4])
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
        "set": photo_set.name,
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


def photos_suite(args: argparse.Namespace) -> None:
    print(header("torch", "onnxruntime", "faiss-cpu"))
    rows = [one_set(s, args.work / s.name) for s in args.sets]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    suites = parser.add_subparsers(dest="suite", required=True)
    index = suites.add_parser("index", help="build, memory, queries/s and recall@10 per FAISS index")
    index.add_argument("--rows", type=int, default=100_000)
    index.add_argument("--queries", type=int, default=200)
    index.add_argument("--kinds", default="flat,ivf,hnsw", help="comma-separated: flat, ivf, hnsw")
    index.add_argument("--data", choices=["clusters", "latent"], default="clusters")
    dups = suites.add_parser("duplicates", help="--duplicates at scale: time and planted copies found")
    dups.add_argument("--rows", type=int, default=100_000, help="distinct rows (copies come on top)")
    dups.add_argument("--copies", type=int, default=1000)
    dups.add_argument("--nprobe", default="1,4", help="comma-separated nprobe values to time")
    real = suites.add_parser("photos", help="near-duplicate precision and recall on real photos")
    real.add_argument("sets", nargs="+", type=Path)
    real.add_argument("--work", type=Path, required=True)
    args = parser.parse_args(argv)
    {"index": index_suite, "duplicates": duplicates_suite, "photos": photos_suite}[args.suite](args)


if __name__ == "__main__":
    main()
