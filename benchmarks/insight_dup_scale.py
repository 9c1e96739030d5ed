"""`skutag similar --duplicates` at catalog scale: time and found planted copies per IVF `nprobe`.

Synthetic 2048-d embeddings (`--data latent` of benchmarks.insight_suite: continuous, no cluster
boundaries) with `--copies` planted near copies: a row's vector plus Gaussian noise scaled so the
cosine distance to its original is uniform in [0.002, 0.018], under the 0.02 default threshold,
as a resized or recompressed photo's embedding is (RESULTS.md, real photos). The real
`insight.duplicates.duplicate_groups` runs on an IVF index built as `skutag index` builds it;
found = groups that are exactly a planted pair; extra = rows of any other group.

    python -m benchmarks.insight_dup_scale --rows 100000 --nprobe 1,4,79
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
from skutag.insight.duplicates import DEFAULT_THRESHOLD, duplicate_groups
from skutag.insight.index import IndexInfo, SimilarityIndex, ivf_lists, normalize

from benchmarks import insight_suite


def planted(vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Near copies of `vectors` at cosine distances uniform in [0.002, 0.018]."""
    dim = vectors.shape[1]
    distance = rng.uniform(0.002, 0.018, len(vectors))
    eps = np.sqrt(2 * distance / dim)  # |noise|^2 / 2 ~ dim * eps^2 / 2 for a unit vector
    return normalize(vectors + eps[:, None] * rng.standard_normal(vectors.shape, dtype=np.float32))


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000, help="distinct rows (copies come on top)")
    parser.add_argument("--copies", type=int, default=1000)
    parser.add_argument("--nprobe", default="1,4", help="comma-separated nprobe values to time")
    args = parser.parse_args()
    insight_suite.DATA["kind"] = "latent"
    dim, rows = insight_suite.DIM, args.rows
    nlist = ivf_lists(rows + args.copies)
    index = faiss.index_factory(dim, f"IVF{nlist},SQfp16", faiss.METRIC_INNER_PRODUCT)
    start = time.perf_counter()
    index.train(insight_suite.ivf_sample(nlist))
    rng = np.random.default_rng(7)
    originals = np.sort(rng.choice(rows, args.copies, replace=False))
    kept = []
    for offset in range(0, rows, insight_suite.CHUNK):
        x = insight_suite.chunk(min(insight_suite.CHUNK, rows - offset), offset)
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


if __name__ == "__main__":
    main()
