"""Similarity index at scale: build time, memory, queries per second and recall@10, exact vs IVF.

Synthetic 2048-d float32 embeddings shaped like pooled ReLU features (cluster centres plus
noise, non-negative, L2-normalised), generated in seeded chunks so 1M rows never sit in
memory twice. Exact ground truth is computed chunk by chunk (no second 8 GB copy); the exact
index's memory is n x d x 4 bytes (IndexFlatIP stores the vectors and nothing else).

    python -m benchmarks.insight_suite --rows 100000 [--flat] [--queries 200]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from insight.index import default_nprobe, ivf_lists, normalize

DIM, CLUSTERS, CHUNK = 2048, 1000, 50_000


def chunk(n: int, start: int, seed: int = 0) -> np.ndarray:
    centres = np.random.default_rng(seed).random((CLUSTERS, DIM), dtype=np.float32)
    rng = np.random.default_rng([seed, start])
    x = centres[rng.integers(0, CLUSTERS, n)] + 0.5 * rng.standard_normal((n, DIM), dtype=np.float32)
    return normalize(np.maximum(x, 0))


def chunks(rows: int):
    for start in range(0, rows, CHUNK):
        yield chunk(min(CHUNK, rows - start), start)


def exact_topk(queries: np.ndarray, rows: int, k: int = 10) -> np.ndarray:
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
    return kb / 1e6


def measure(index, rows: int, queries: np.ndarray, truth: np.ndarray, name: str, train=None) -> dict:
    before = rss_gb()
    start = time.perf_counter()
    if train is not None:
        index.train(train)
    trained = time.perf_counter() - start
    for x in chunks(rows):
        index.add(x)
    build = time.perf_counter() - start
    memory = rss_gb() - before
    index.search(queries[:8], 10)  # warm
    start = time.perf_counter()
    _, found = index.search(queries, 10)
    qps = len(queries) / (time.perf_counter() - start)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    return dict(
        index=name, rows=rows, build_s=build, train_s=trained, memory_gb=memory, qps=qps, recall=recall
    )


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--flat", action="store_true", help="also build the exact index (n x 8 KB of memory)")
    args = parser.parse_args()
    rows = args.rows
    queries = chunk(args.queries, 10**9)  # fresh points from the same distribution
    start = time.perf_counter()
    truth = exact_topk(queries, rows)
    print(f"exact ground truth (numpy, chunked): {time.perf_counter() - start:.1f} s", flush=True)
    results = []
    if args.flat:
        results.append(measure(faiss.IndexFlatIP(DIM), rows, queries, truth, "flat (exact)"))
    nlist = ivf_lists(rows)
    sample = np.concatenate(
        [chunk(min(CHUNK, nlist * 40 - s), 10**8 + s) for s in range(0, nlist * 40, CHUNK)]
    )
    for nprobe in sorted({default_nprobe(nlist) // 2, default_nprobe(nlist), default_nprobe(nlist) * 2}):
        index = faiss.index_factory(DIM, f"IVF{nlist},SQfp16", faiss.METRIC_INNER_PRODUCT)
        index.nprobe = nprobe
        results.append(
            measure(index, rows, queries, truth, f"IVF{nlist},SQfp16 nprobe {nprobe}", train=sample)
        )
        break_after_first = rows > 200_000  # at 1M one build; other nprobe values re-searched below
        if break_after_first:
            for other in sorted({default_nprobe(nlist) // 2, default_nprobe(nlist) * 2}):
                index.nprobe = other
                start = time.perf_counter()
                _, found = index.search(queries, 10)
                qps = len(queries) / (time.perf_counter() - start)
                recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
                results.append(
                    dict(results[-1], index=f"IVF{nlist},SQfp16 nprobe {other}", qps=qps, recall=recall)
                )
            break
    print(
        f"threads {faiss.omp_get_max_threads()}, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB"
    )
    print("| index | rows | build s (of which k-means) | memory GB | queries/s | recall@10 |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['index']} | {r['rows']:,} | {r['build_s']:.1f} ({r['train_s']:.1f}) | {r['memory_gb']:.2f} "
            f"| {r['qps']:.0f} | {r['recall']:.3f} |"
        )


if __name__ == "__main__":
    main()
