"""`skutag index` / `skutag similar`: near copies come back, the index is exact search, duplicate groups are exact.

The model is a random-weights resnet18 at 64 px exported with `--embeddings` (as in
tests/batchrun/test_run.py). Its embedding distances are small (ReLU features of a random network
all point one way) but copies still rank first. The catalog is synthetic with planted copies:
8 originals with a resized, a recompressed and a cropped copy each, and 3 byte copies.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from skutag.batchrun.api import run_catalog
from skutag.batchrun.options import RunOptions
from skutag.insight.duplicates import DUPLICATES_NPROBE, calibrate_threshold, duplicate_groups
from skutag.insight.index import build_index, load_index, normalize
from skutag.insight.similar import id_queries, image_queries, similar

from benchmarks.common import plant_copies
from skutag.card import METADATA_KEY, ModelCard
from skutag.errors import InputError
from skutag.images import is_image_path
from skutag.synth import SynthSpec, make_catalog
from tests.support.cli import invoke, skutag

CLASSES = ["boot", "cup", "lamp", "sock"]


@pytest.fixture(scope="module")
def model(embedding_model) -> Path:
    return embedding_model


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict[str, set[str]]]:
    root = tmp_path_factory.mktemp("planted")
    make_catalog(root, SynthSpec(count=80, classes=4, min_size=96, max_size=160, seed=3))
    images = sorted(p for p in root.rglob("*") if is_image_path(p))
    return root, plant_copies(root, images[:8], images[8:11])


@pytest.fixture(scope="module")
def run_out(model, planted, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    run_catalog(model, [str(planted[0])], str(out), RunOptions(embeddings=True, batch_size=16))
    return out


@pytest.fixture(scope="module")
def index_dir(run_out, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("index") / "idx"
    result = skutag("index", run_out, "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def test_near_copies_are_in_the_top_5(index_dir, planted, capsys):
    """The first query as a user runs it (a process of its own), the others through the same CLI in this
    process (a second each, eleven times, for nothing more)."""
    for n, (original, group) in enumerate(planted[1].items()):
        args = ("similar", index_dir, "--id", original, "-k", 5, "--format", "json")
        if n == 0:
            result = skutag(*args)
            assert result.returncode == 0, result.stderr
            stdout = result.stdout
        else:
            code, stdout, stderr = invoke(capsys, *map(str, args))
            assert code == 0, stderr
        answers = json.loads(stdout)
        got = {a["id"] for a in answers}
        assert original not in got  # a query never answers itself
        assert group - {original} <= got, (original, answers)
        assert [a["rank"] for a in answers] == [1, 2, 3, 4, 5]
        assert all(a["distance"] <= b["distance"] for a, b in zip(answers, answers[1:], strict=False))


def test_an_image_query_runs_the_index_model(index_dir, planted, model):
    index = load_index(index_dir)
    assert index.info.model == str(model.resolve())
    original = next(iter(planted[1]))
    by_image = similar(index, image_queries(index, [str(planted[0] / original)]), 5)
    by_id = similar(index, id_queries(index, [original]), 4)
    # the image is in the index, so it answers itself first at distance ~0, then what --id answers
    assert by_image.column("id")[0].as_py() == original
    assert by_image.column("distance")[0].as_py() < 1e-5
    assert by_image.column("id").to_pylist()[1:] == by_id.column("id").to_pylist()


def test_same_label_keeps_the_query_label(index_dir, planted):
    index = load_index(index_dir)
    query = id_queries(index, [next(iter(planted[1]))])
    answers = similar(index, query, 10, same_label=True)
    assert answers.num_rows == 10
    assert set(answers.column("label").to_pylist()) == {query[0].label}


def test_flat_index_is_exact_search(index_dir, run_out):
    index = load_index(index_dir)
    assert index.info.kind == "flat"
    table = ds.dataset(run_out, format="parquet").to_table(filter=ds.field("status") == "ok")
    vectors = normalize(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)))
    ids = table.column("id").to_pylist()
    exact = np.argsort(-(vectors @ vectors.T), axis=1, kind="stable")[:, :10]
    distances, positions = index.search(vectors, 10)
    indexed = index.rows.column("id").to_pylist()
    for row in range(len(ids)):
        got = [indexed[p] for p in positions[row]]
        want = [ids[p] for p in exact[row]]
        # equal sets; ties (byte copies) may come in either order
        assert set(got) == set(want) or np.allclose(
            distances[row], np.sort(1 - vectors[row] @ vectors.T)[:10], atol=1e-5
        )


def test_duplicate_groups_are_the_planted_ones(index_dir, planted, tmp_path):
    """Byte, resized and recompressed copies: exactly the planted groups at a calibrated threshold.

    The threshold is calibrated on the planted copies' distances vs all distinct pairs, as
    RESULTS.md does on real photos. Crops of a random network's 64 px input move as far as
    the closest distinct synthetic photos, so crops are checked by ranking (top 5) above.
    """
    index = load_index(index_dir)
    ids = index.rows.column("id").to_pylist()
    group_of = {i: g for g, members in enumerate(planted[1].values()) for i in members if "cropped" not in i}
    vectors = index.vectors(np.arange(len(ids)))
    distance = 1 - vectors @ vectors.T
    same = np.array([[group_of.get(a, -1) == group_of.get(b, -2) for b in ids] for a in ids])
    distinct = ~same & ~np.eye(len(ids), dtype=bool)
    np.fill_diagonal(same, False)
    threshold = calibrate_threshold(distance[same], distance[distinct])
    out = tmp_path / "dups.parquet"
    args = ["--duplicates", "--threshold", threshold, "--format", "parquet", "--out", out]
    assert skutag("similar", index_dir, *args).returncode == 0
    found = pq.read_table(out)
    groups = {
        frozenset(g["id"])
        for g in found.group_by("group")
        .aggregate([("id", "list")])
        .rename_columns(["group", "id"])
        .to_pylist()
    }
    wanted = {frozenset(m for m in members if "cropped" not in m) for members in planted[1].values()}
    assert groups == wanted
    assert set(found.filter(found.column("same_bytes")).column("sha256").to_pylist()) == {
        s
        for s in index.rows.column("sha256").to_pylist()
        if index.rows.column("sha256").to_pylist().count(s) > 1
    }


def _fake_run(out: Path, vectors: np.ndarray) -> None:
    card = ModelCard.for_training("resnet50", CLASSES)
    n, dim = vectors.shape
    table = pa.table(
        {
            "id": [f"item-{i}" for i in range(n)],
            "uri": [f"/catalog/item-{i}.jpg" for i in range(n)],
            "status": ["ok"] * n,
            "label": [CLASSES[i % 4] for i in range(n)],
            "sha256": [f"{i:064x}" for i in range(n)],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        }
    ).replace_schema_metadata({METADATA_KEY: card.to_json(), "skutag.model_sha256": "0" * 64})
    out.mkdir()
    pq.write_table(table.slice(0, n // 2), out / "part-00000.parquet")
    pq.write_table(table.slice(n // 2), out / "part-00001.parquet")
    parts = [{"unit": u, "file": f"part-{u:05d}.parquet"} for u in (0, 1)]
    (out / "_manifest.json").write_text(json.dumps({"format": 2, "key": {}, "parts": parts}))
    pq.write_table(table.slice(0, 3), out / "part-00002.parquet")  # uncommitted (no log lists it): never read
    (out / "_plan").mkdir()
    pq.write_table(pa.table({"id": ["not data"]}), out / "_plan" / "plan-00000.parquet")


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """ReLU-like embeddings: cluster centres plus noise, non-negative."""
    rng = np.random.default_rng(seed)
    centres = rng.random((clusters, dim), dtype=np.float32)
    return np.maximum(
        centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim), dtype=np.float32), 0
    )


def test_ivf_index_recalls_exact_search_and_since_reuses_its_lists(tmp_path):
    vectors = clustered(12_000, 64, 50, seed=0)
    _fake_run(tmp_path / "run", vectors)
    flat = build_index([str(tmp_path / "run")], tmp_path / "flat")
    ivf = build_index([str(tmp_path / "run")], tmp_path / "ivf", kind="ivf")
    assert (flat.info.kind, ivf.info.kind, flat.info.rows) == ("flat", "ivf", 12_000)
    queries = vectors[:300]
    _, exact = flat.search(queries, 10)
    brute = np.argsort(-(normalize(queries) @ normalize(vectors).T), axis=1)[:, :10]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, brute, strict=True)]) > 0.999
    _, approximate = load_index(tmp_path / "ivf").search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approximate, exact, strict=True)])
    assert recall >= 0.9, recall
    _, everywhere = load_index(tmp_path / "ivf", nprobe=10**6).search(queries, 10)  # every list: exact
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(everywhere, exact, strict=True)]) >= 0.99
    with pytest.raises(InputError, match="--nprobe applies to IVF"):
        load_index(tmp_path / "flat", nprobe=4)
    again = build_index([str(tmp_path / "run")], tmp_path / "ivf2", kind="ivf", since=tmp_path / "ivf")
    np.testing.assert_array_equal(
        again.faiss_index.quantizer.reconstruct_n(0, again.info.nlist),
        ivf.faiss_index.quantizer.reconstruct_n(0, ivf.info.nlist),
    )


def test_errors_are_one_line(tmp_path, run_out, index_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = skutag("index", empty, "--out", tmp_path / "x")
    assert result.returncode == 2 and "no committed parts" in result.stderr
    assert "Traceback" not in result.stderr
    result = skutag("similar", index_dir, "--id", "no-such-id")
    assert result.returncode == 2 and "not in the index" in result.stderr
    result = skutag("similar", index_dir)
    assert result.returncode == 2


def test_duplicates_on_an_ivf_index_find_planted_near_copies_with_few_lists(tmp_path):
    vectors = normalize(clustered(6_000, 64, 50, seed=1))
    rng = np.random.default_rng(2)
    originals = rng.choice(len(vectors), 40, replace=False)
    copies = normalize(vectors[originals] + 0.004 * rng.standard_normal((40, 64), dtype=np.float32))
    _fake_run(tmp_path / "run", np.concatenate([vectors, copies]))
    build_index([str(tmp_path / "run")], tmp_path / "ivf", kind="ivf")
    loaded = load_index(tmp_path / "ivf")
    threshold = 0.005
    groups = duplicate_groups(loaded, threshold)
    assert loaded.faiss_index.nprobe == DUPLICATES_NPROBE < loaded.info.nprobe
    members: dict[int, set[str]] = {}
    for row_id, group in zip(
        groups.column("id").to_pylist(), groups.column("group").to_pylist(), strict=True
    ):
        members.setdefault(group, set()).add(row_id)
    planted = {frozenset((f"item-{o}", f"item-{6_000 + k}")) for k, o in enumerate(originals)}
    exact = normalize(np.concatenate([vectors, copies]))
    close = exact @ exact.T > 1 - threshold  # every pair under the threshold, by brute force
    np.fill_diagonal(close, False)
    assert int(close.sum()) // 2 == len(planted)  # the data has no other near pair
    assert {frozenset(m) for m in members.values()} == planted
