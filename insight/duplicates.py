"""Near-duplicate listings: groups of rows whose photos are the same bytes or nearly the same picture.

Two rows are linked when their files have the same sha256, or when the cosine distance of
their embeddings is below `threshold` (a range search over the index, in batches). Groups
are the connected components of those links (single linkage: A~B and B~C put A, B, C in
one group), of two rows or more. `calibrate_threshold` picks the threshold that separates
distances of known copies (resized, recompressed, cropped) from distances between distinct
photos; DEFAULT_THRESHOLD is its value on the real photos in RESULTS.md.

On an IVF index the range search visits DUPLICATES_NPROBE lists, not the index's own nprobe:
a near copy lies within 0.02 of its original, so nearly always in the same list, and
`--duplicates` searches once per row: at 1M rows the similarity default (a quarter of the
lists) would take hours (benchmarks/insight_dup_scale.py, RESULTS.md).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from skutag.insight.index import SimilarityIndex

DEFAULT_THRESHOLD = 0.02
DUPLICATES_NPROBE = 4
SEARCH_ROWS = 4096

GROUP_SCHEMA = pa.schema(
    [
        pa.field("group", pa.int32()),
        pa.field("id", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("label", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("same_bytes", pa.bool_()),  # another row of the group has the same file bytes
        pa.field("distance", pa.float32()),  # to the nearest other row of the group
    ]
)


class _Components:
    """Union-find over row positions."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def duplicate_groups(
    index: SimilarityIndex, threshold: float = DEFAULT_THRESHOLD, nprobe: int | None = None
) -> pa.Table:
    """GROUP_SCHEMA rows of every group of two or more, groups numbered by their first row.
    `nprobe`: lists an IVF index visits per row (default DUPLICATES_NPROBE)."""
    if index.info.kind == "ivf":
        index.faiss_index.nprobe = min(nprobe or DUPLICATES_NPROBE, index.info.nlist)
    n = index.info.rows
    components = _Components(n)
    nearest = np.full(n, np.inf, np.float32)
    by_sha: dict[str, int] = {}
    same_bytes = np.zeros(n, bool)
    for position, sha in enumerate(index.rows.column("sha256").to_pylist()):
        if sha is None:
            continue
        first = by_sha.setdefault(sha, position)
        if first != position:
            components.union(first, position)
            same_bytes[[first, position]] = True
            nearest[[first, position]] = 0.0
    for start in range(0, n, SEARCH_ROWS):
        positions = np.arange(start, min(start + SEARCH_ROWS, n))
        lims, similarity, found = index.faiss_index.range_search(index.vectors(positions), 1.0 - threshold)
        for row, position in enumerate(positions):
            for other, sim in zip(
                found[lims[row] : lims[row + 1]], similarity[lims[row] : lims[row + 1]], strict=True
            ):
                if other != position:
                    components.union(int(position), int(other))
                    nearest[position] = min(nearest[position], 1.0 - sim)
    roots = np.array([components.find(i) for i in range(n)])
    sizes = np.bincount(roots, minlength=n)
    members = np.flatnonzero(sizes[roots] > 1)
    order = members[np.lexsort((members, roots[members]))]
    group_of_root = {root: g for g, root in enumerate(dict.fromkeys(roots[order].tolist()))}
    rows = index.rows.take(pa.array(order))
    return pa.table(
        {
            "group": pa.array([group_of_root[r] for r in roots[order]], pa.int32()),
            "id": rows.column("id"),
            "uri": rows.column("uri"),
            "label": rows.column("label"),
            "sha256": rows.column("sha256"),
            "same_bytes": pa.array(same_bytes[order]),
            "distance": pa.array(np.maximum(nearest[order], 0.0), pa.float32()),
        },
        schema=GROUP_SCHEMA,
    )


def calibrate_threshold(copy_distances: np.ndarray, distinct_distances: np.ndarray) -> float:
    """The threshold with the fewest errors: copies at or above it are missed, distinct pairs below it merged.

    Ties (a range of thresholds with the same error count) resolve to the middle of the range,
    which leaves the most margin on both sides.
    """
    copies = np.sort(np.asarray(copy_distances, np.float64))
    distinct = np.sort(np.asarray(distinct_distances, np.float64))
    candidates = np.unique(np.concatenate([copies, distinct, [0.0]]))
    cuts = np.concatenate([candidates, [candidates[-1] + 1e-6]])
    # threshold t: missed = copies >= t, merged = distinct < t
    errors = np.searchsorted(copies, cuts, side="left")
    errors = (len(copies) - errors) + np.searchsorted(distinct, cuts, side="left")
    best = np.flatnonzero(errors == errors.min())
    last = best[0]
    while last + 1 < len(cuts) and errors[last + 1] == errors[best[0]]:  # the first run of best cuts
        last += 1
    # errors[j] holds for every threshold in (cuts[j-1], cuts[j]]: take the middle of the best run
    low = cuts[best[0] - 1] if best[0] > 0 else 0.0
    return float((low + cuts[last]) / 2)
