"""The similarity index: FAISS over the `embedding` column of batch runs, with its rows and its model.

`build_index(OUT..., INDEX)` streams the committed Parquet parts of each run (the ones its
commit logs list, through `batchrun.commit.reader.CommittedRows`: a part left by a crashed
attempt is never read), keeps the `ok` rows, L2-normalises their
embeddings (inner product = cosine similarity) and adds them to an exact `IndexFlatIP` up to
`EXACT_MAX_ROWS` rows, an `IVF,SQfp16` index beyond (coarse k-means on a strided sample;
0.7x the memory of exact; `nprobe` from the benchmark in RESULTS.md). HNSW was measured and
is not offered: at 1M rows it built 7.6x slower than IVF and held 1.5x its memory, recalled
no more (0.98 at efSearch 256 on continuous embeddings, 0.77 at 128 on clustered ones), and
its millisecond queries do not matter to a command that first loads the index from disk.
INDEX is a directory:

    index.faiss   the FAISS index; position i is row i of rows.parquet
    rows.parquet  id, uri, label (predicted), sha256, source (which OUT)
    index.json    kind, dim, rows, nprobe, model path and sha256, the model card, sources

Every run must come from the same model (`skutag.model_sha256` in the Parquet metadata).
`since=PREV_INDEX`: the index is still a complete snapshot of the given runs, rebuilt; an IVF
index reuses PREV_INDEX's trained coarse quantizer when the model and size class are the
same, so a nightly `--since` run pays the adding, not the training (11 s of 91 s at 1M rows).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from skutag.batchrun.commit.reader import CommittedRows

from skutag import __version__
from skutag.card import METADATA_KEY, ModelCard
from skutag.errors import InputError
from skutag.extras import require
from skutag.fsio import atomic_path, atomic_write_json

INDEX_FILE, ROWS_FILE, INFO_FILE = "index.faiss", "rows.parquet", "index.json"
SHA_KEY = "skutag.model_sha256"
ROW_COLUMNS = ["id", "uri", "label", "sha256"]
# Exact search over 100k 2048-d rows answers one query in ~40 ms on 2 cores, over 1M in ~0.4 s and
# 8.2 GB (RESULTS.md); beyond 200k rows IVF answers in tens of ms in 0.6-0.7x the memory.
EXACT_MAX_ROWS = 200_000
TRAIN_PER_LIST = 40  # k-means sample: FAISS warns below 39 points per centroid
READ_ROWS = 16_384


@dataclass(frozen=True)
class IndexInfo:
    """index.json: what the index is and which model made its vectors."""

    kind: str  # flat | ivf
    dim: int
    rows: int
    model_sha256: str
    card: dict[str, Any]
    sources: list[str]
    model: str | None = None  # the ONNX file, for image queries (its sha256 is checked when used)
    nlist: int | None = None
    nprobe: int | None = None
    built_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    skutag_version: str = __version__

    @property
    def model_card(self) -> ModelCard:
        return ModelCard.from_dict(self.card)


@dataclass
class SimilarityIndex:
    """A loaded index: `search` answers positions into `rows` and cosine distances (1 - cosine)."""

    faiss_index: Any
    rows: pa.Table
    info: IndexInfo

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, positions), each [len(vectors), k], nearest first; -1 positions where fewer exist."""
        k = max(1, min(k, self.info.rows))
        similarity, positions = self.faiss_index.search(normalize(vectors), k)
        return 1.0 - similarity, positions

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        """The stored (normalised) vectors at `positions`."""
        return np.stack([self.faiss_index.reconstruct(int(p)) for p in positions]).astype(np.float32)

    def positions_of(self, item_id: str) -> np.ndarray:
        return np.flatnonzero(pc.equal(self.rows.column("id"), item_id).to_numpy(zero_copy_only=False))


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32 and contiguous, as FAISS wants."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


@dataclass(frozen=True)
class Runs:
    """The batch runs to index, checked to share one model and one embedding size."""

    datasets: list[ds.Dataset]
    sources: list[str]
    model_sha256: str
    card: ModelCard
    dim: int
    rows: int  # ok rows with an embedding, all runs


def open_runs(outs: list[str]) -> Runs:
    """Open each OUT as a Parquet dataset and check its metadata (card, model sha256, embedding column)."""
    datasets, shas, card, dim, rows = [], set(), None, None, 0
    for out in outs:
        try:  # committed parts only, as the run's commit logs list them (never a glob of OUT)
            dataset = CommittedRows(str(out)).dataset()
        except (OSError, ValueError, pa.ArrowInvalid) as exc:
            raise InputError(f"cannot read batch run {out}: {exc}") from exc
        if "embedding" not in dataset.schema.names:
            raise InputError(f"{out} has no embedding column: run `skutag run ... --embeddings`")
        for fragment in dataset.get_fragments():
            meta = fragment.physical_schema.metadata or {}
            if METADATA_KEY.encode() not in meta or SHA_KEY.encode() not in meta:
                raise InputError(f"{fragment.path} has no skutag model card in its metadata")
            shas.add(meta[SHA_KEY.encode()].decode())
            card = card or ModelCard.from_json(meta[METADATA_KEY.encode()])
        if len(shas) > 1:
            raise InputError(
                f"the runs were made by different models ({sorted(shas)}); index one model's runs"
            )
        dim = dataset.schema.field("embedding").type.list_size
        rows += dataset.count_rows(filter=_usable())
        datasets.append(dataset)
    if rows == 0:
        raise InputError(f"no ok rows with embeddings in {', '.join(outs)}")
    return Runs(datasets, [str(o) for o in outs], shas.pop(), card, dim, rows)


def _usable() -> ds.Expression:
    return (ds.field("status") == "ok") & ds.field("embedding").is_valid()


def iter_embeddings(runs: Runs, batch_rows: int = READ_ROWS) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """(rows, normalised embeddings) in bounded batches, run after run; rows carry `source`."""
    for source, dataset in enumerate(runs.datasets):
        scanner = dataset.scanner(
            columns=[*ROW_COLUMNS, "embedding"], filter=_usable(), batch_size=batch_rows
        )
        for batch in scanner.to_batches():
            if batch.num_rows == 0:
                continue
            flat = batch.column("embedding").flatten().to_numpy(zero_copy_only=False)
            rows = pa.Table.from_batches([batch.select(ROW_COLUMNS)])
            rows = rows.append_column("source", pa.array(np.full(batch.num_rows, source, np.int32)))
            yield rows, normalize(flat.reshape(batch.num_rows, runs.dim))


def ivf_lists(rows: int) -> int:
    """Coarse lists for `rows` vectors: about sqrt(rows) (k-means cost stays minutes on 2 cores at 1M)."""
    return max(64, int(round(math.sqrt(rows))))


def default_nprobe(nlist: int) -> int:
    """Lists visited per query: a quarter of them. Recall@10 0.94 at 100k rows and 0.99 at 1M of
    continuous (hard) 2048-d embeddings, 0.999 of clustered ones, a single query ~10x faster than
    exact search at 1M; nlist/16 recalled only 0.63-0.83 of the continuous ones (RESULTS.md)."""
    return max(8, nlist // 4)


def build_index(
    outs: list[str],
    out: str | Path,
    *,
    kind: str = "auto",
    model: str | None = None,
    since: str | Path | None = None,
) -> SimilarityIndex:
    """Index the ok rows of the batch runs `outs` into the directory `out`; see the module docstring."""
    faiss = require("faiss", "insight", "the nearest-neighbour index")
    runs = open_runs(outs)
    model_path = _model_path(model, outs, runs.model_sha256)
    if kind == "auto":
        kind = "flat" if runs.rows <= EXACT_MAX_ROWS else "ivf"
    nlist = nprobe = None
    if kind == "flat":
        index = faiss.IndexFlatIP(runs.dim)
    elif kind == "ivf":
        nlist = ivf_lists(runs.rows)
        index = _previous_quantizer(since, runs, nlist)
        if index is None:
            index = faiss.index_factory(runs.dim, f"IVF{nlist},SQfp16", faiss.METRIC_INNER_PRODUCT)
            index.train(_training_sample(runs, nlist * TRAIN_PER_LIST))
        nprobe = default_nprobe(nlist)
        index.nprobe = nprobe
    else:
        raise InputError(f"unknown index kind {kind!r}; expected auto, flat or ivf")
    pieces = []
    for rows, vectors in iter_embeddings(runs):
        index.add(vectors)
        pieces.append(rows)
    table = pa.concat_tables(pieces)
    info = IndexInfo(
        kind=kind, dim=runs.dim, rows=table.num_rows, model_sha256=runs.model_sha256,
        card=runs.card.to_dict(), sources=runs.sources, model=model_path, nlist=nlist, nprobe=nprobe,
    )  # fmt: skip
    result = SimilarityIndex(index, table, info)
    save_index(result, out)
    return result


def _model_path(model: str | None, outs: list[str], sha256: str) -> str | None:
    """The model file for image queries: `model`, else the one OUT/_summary.json names; sha256 checked."""
    from skutag.fsio import sha256_file

    candidates = [model] if model else []
    for out in outs:
        summary = Path(out) / "_summary.json"
        if not model and summary.is_file():
            candidates.append(json.loads(summary.read_text()).get("model"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            if sha256_file(candidate) == sha256:
                return str(Path(candidate).resolve())
            if model:
                raise InputError(f"--model {model} is not the model that made these runs (sha256 differs)")
    if model:
        raise InputError(f"--model {model}: no such file")
    return None


def _training_sample(runs: Runs, size: int) -> np.ndarray:
    """About `size` vectors taken at an even stride over all runs (one streaming pass)."""
    step = max(1, runs.rows // size)
    taken, seen = [], 0
    for _, vectors in iter_embeddings(runs):
        first = (-seen) % step
        taken.append(vectors[first::step])
        seen += len(vectors)
    return np.ascontiguousarray(np.concatenate(taken))


def _previous_quantizer(since: str | Path | None, runs: Runs, nlist: int):
    """PREV_INDEX's trained IVF index, emptied, when it was made by the same model with the same lists."""
    if since is None:
        return None
    previous = load_index(since)
    same = (
        previous.info.kind == "ivf"
        and previous.info.model_sha256 == runs.model_sha256
        and previous.info.dim == runs.dim
        and previous.info.nlist == nlist
    )
    if not same:
        return None
    index = previous.faiss_index
    index.reset()
    return index


def save_index(index: SimilarityIndex, out: str | Path) -> None:
    faiss = require("faiss", "insight", "the nearest-neighbour index")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / INDEX_FILE) as tmp:
        faiss.write_index(index.faiss_index, str(tmp))
    with atomic_path(out / ROWS_FILE) as tmp:
        pq.write_table(index.rows, tmp, compression="zstd")
    atomic_write_json(out / INFO_FILE, asdict(index.info))


def load_index(path: str | Path, nprobe: int | None = None) -> SimilarityIndex:
    """Open an index directory written by `build_index`; `nprobe` overrides an IVF index's own."""
    faiss = require("faiss", "insight", "the nearest-neighbour index")
    path = Path(path)
    if not (path / INFO_FILE).is_file():
        raise InputError(f"{path} is not a skutag index (no {INFO_FILE}); build one with `skutag index`")
    info = IndexInfo(**json.loads((path / INFO_FILE).read_text()))
    if nprobe is not None and info.kind != "ivf":
        raise InputError(f"--nprobe applies to IVF indexes; {path} is {info.kind} (exact search)")
    index = faiss.read_index(str(path / INDEX_FILE))
    if info.kind == "ivf":
        index.nprobe = min(nprobe or info.nprobe, info.nlist)
        index.make_direct_map()  # reconstruct() for --id queries
    return SimilarityIndex(index, pq.read_table(path / ROWS_FILE), info)
