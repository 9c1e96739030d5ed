"""Similarity index at scale: build time, memory, queries per second and recall@10 per FAISS index.

Synthetic 2048-d float32 embeddings shaped like pooled ReLU features (non-negative,
L2-normalised), generated in seeded chunks so 1M rows never sit in memory twice:
`--data clusters` draws 1,000 cluster centres plus noise (at 1M rows IVF's 1,000 lists line
up with the clusters: easy for IVF); `--data latent` maps a continuous 32-d Gaussian through
a random projection (neighbours without cluster boundaries: hard for every approximate index). Exact ground truth is computed chunk by chunk with numpy (no second 8 GB copy).
Each index is built once, measured at several search depths (IVF `nprobe`, HNSW `efSearch`),
and freed before the next, so 1M rows of exact + HNSW never share the memory.

Queries per second are for one batch of `--queries` queries (how `skutag similar --duplicates`
and multi-image queries search) and, separately, the median latency of single queries (how one
`skutag similar --id` is answered).

    python -m benchmarks.insight_suite --rows 100000 [--data clusters|latent] [--kinds flat,ivf,hnsw]
"""

from __future__ import annotations

import argparse
import gc
import platform
import time
from collections.abc import Callable, Iterator

import numpy as np
from skutag.insight.index import default_nprobe, ivf_lists, normalize

DIM, CLUSTERS, LATENT, CHUNK, K = 2048, 1000, 32, 50_000, 10
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 40
DATA = {"kind": "clusters"}  # set once by main (--data)


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


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--kinds", default="flat,ivf,hnsw", help="comma-separated: flat, ivf, hnsw")
    parser.add_argument("--data", choices=["clusters", "latent"], default="clusters")
    args = parser.parse_args()
    DATA["kind"] = args.data
    queries = chunk(args.queries, 10**9)  # fresh points from the same distribution
    start = time.perf_counter()
    truth = exact_topk(queries, args.rows)
    print(f"exact ground truth (numpy, chunked): {time.perf_counter() - start:.1f} s", flush=True)
    results = [r for kind in args.kinds.split(",") for r in measure_kind(kind, args.rows, queries, truth)]
    print(
        f"{platform.processor() or platform.machine()}, faiss {faiss.__version__}, "
        f"{faiss.omp_get_max_threads()} threads, numpy {np.__version__}, --data {args.data}"
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


if __name__ == "__main__":
    main()
