"""`skutag similar`: the k nearest listings of indexed ids or of new images.

An image query goes through the index's own model: the ONNX file named in index.json (or
`--model`), its sha256 checked against the one the index was built from, decoded by
`skutag.images.load_image` with the card's preprocessing and run by ONNX Runtime through
`skutag.runtime.create_session`. Answers are one table: query, rank, id, uri, label, distance
(cosine distance, 1 - cosine similarity; 0 is the same direction).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from skutag.insight.index import SimilarityIndex

from skutag.errors import InputError

RESULT_SCHEMA = pa.schema(
    [
        pa.field("query", pa.string()),
        pa.field("rank", pa.int32()),
        pa.field("id", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("label", pa.string()),
        pa.field("distance", pa.float32()),
    ]
)


@dataclass(frozen=True)
class Query:
    name: str
    vector: np.ndarray  # [D]
    label: str | None  # the query's (predicted) label, for --same-label
    position: int | None = None  # an indexed row: never its own answer


def id_queries(index: SimilarityIndex, ids: list[str]) -> list[Query]:
    """One query per indexed row with each id (an id indexed from two runs gives two queries)."""
    queries = []
    labels = index.rows.column("label")
    for item_id in ids:
        positions = index.positions_of(item_id)
        if len(positions) == 0:
            raise InputError(f"--id {item_id}: not in the index")
        for position, vector in zip(positions, index.vectors(positions), strict=True):
            queries.append(Query(item_id, vector, labels[int(position)].as_py(), int(position)))
    return queries


def image_queries(
    index: SimilarityIndex, images: list[str], *, model: str | None = None, device: str = "cpu"
) -> list[Query]:
    """Embed `images` with the index's model (sha256 checked); undecodable images fail in one line."""
    from skutag.fsio import sha256_file
    from skutag.images import ImageError, model_pixels
    from skutag.runtime import create_session

    info = index.info
    path = model or info.model
    if path is None or not Path(path).is_file():
        raise InputError(
            f"image queries need the index's model ({path or 'not recorded'} is not a file); pass --model"
        )
    if sha256_file(path) != info.model_sha256:
        raise InputError(f"{path} is not the model this index was built with (sha256 differs)")
    card = info.model_card
    session, _ = create_session(path, device, card=card)
    input_name = session.get_inputs()[0].name
    queries = []
    for image in images:
        try:
            pixels = model_pixels(image, card)
        except ImageError as exc:
            raise InputError(f"{image}: {exc}") from exc
        probs, embedding = session.run(["probs", "embedding"], {input_name: _feed(pixels, card)})
        queries.append(Query(image, embedding[0], card.classes[int(probs[0].argmax())]))
    return queries


def _feed(pixels: np.ndarray, card) -> np.ndarray:
    if card.input_dtype == "uint8":
        return pixels[None]
    x = (pixels.astype(np.float32) / 255.0 - np.array(card.mean, np.float32)) / np.array(card.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def similar(
    index: SimilarityIndex, queries: list[Query], k: int = 10, *, same_label: bool = False
) -> pa.Table:
    """The k nearest rows of each query (itself excluded; with `same_label`, only its label's rows)."""
    columns: dict[str, list] = {name: [] for name in RESULT_SCHEMA.names}
    ids, uris, labels = (index.rows.column(c).to_pylist() for c in ("id", "uri", "label"))
    for query in queries:
        fetch = k + 1
        while True:  # widen the search until enough answers pass the filters, or the index is exhausted
            distances, positions = index.search(query.vector[None], fetch)
            hits = [
                (float(d), int(p))
                for d, p in zip(distances[0], positions[0], strict=True)
                if p >= 0 and p != query.position and (not same_label or labels[p] == query.label)
            ]
            if len(hits) >= k or fetch >= index.info.rows:
                break
            fetch = min(fetch * 4, index.info.rows)
        for rank, (distance, position) in enumerate(hits[:k], start=1):
            for name, value in zip(
                RESULT_SCHEMA.names,
                (query.name, rank, ids[position], uris[position], labels[position], distance),
                strict=True,
            ):
                columns[name].append(value)
    return pa.table(columns, schema=RESULT_SCHEMA)
