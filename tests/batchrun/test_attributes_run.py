"""`skutag run` with a model that has attribute heads: the columns, the review queue per attribute,
`--since`; and a model without heads writes exactly today's schema."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from skutag.batchrun.commit.writer import prediction_schema

from skutag.card import ModelCard
from skutag.runtime import create_session
from tests.batchrun.support import run, tiny_catalog

# Today's columns (docs/design.md, "The Parquet schema"), in order, for a model without attribute heads.
TODAY = [
    ("id", pa.string()), ("uri", pa.string()), ("version", pa.string()), ("status", pa.string()),
    ("error_kind", pa.string()), ("error", pa.string()), ("label", pa.string()), ("label_index", pa.int32()),
    ("score", pa.float32()), ("topk_labels", pa.list_(pa.string())), ("topk_indices", pa.list_(pa.int32())),
    ("topk_scores", pa.list_(pa.float32())), ("width", pa.int32()), ("height", pa.int32()),
    ("bytes", pa.int64()), ("sha256", pa.string()), ("predicted_at", pa.timestamp("us", tz="UTC")),
]  # fmt: skip


def test_a_model_without_heads_writes_todays_schema():
    card = ModelCard.for_training("resnet18", ["a", "b"])
    schema = prediction_schema(None, {"skutag.card": card.to_json()})
    assert [(f.name, f.type) for f in schema] == TODAY
    schema = prediction_schema(8, {"skutag.card": card.to_json()}, labelled=True)
    assert schema.names == [n for n, _ in TODAY] + ["embedding", "manifest_label"]


def export(run_dir, out, card=None):
    from skutag.exporter.pipeline import ExportRequest, run_export
    from skutag.trainer.weights import load_trained, save_weights

    if card is not None:  # the same weights under another card (a review section added)
        model, _ = load_trained(run_dir)
        run_dir = out.parent / (out.stem + "-run")
        run_dir.mkdir()
        save_weights(run_dir / "best.safetensors", model, card)
    return run_export(ExportRequest(source=run_dir, out=out, check=False)).model


@pytest.fixture(scope="module")
def models(attribute_run, tmp_path_factory):
    run_dir, card = attribute_run
    work = tmp_path_factory.mktemp("attr-models")
    review = {
        "score": "1-max-cosine",
        "class_means": np.eye(len(card.classes), 512).tolist(),
        "ood_threshold": 2.0,  # never: only the attribute heads flag rows here
        "tpr": 0.95,
        "confidence_threshold": 0.0,
    }
    color, style = card.attributes
    reviewed = card.replace(
        attributes=(
            dataclasses.replace(color, review_threshold=0.9),
            dataclasses.replace(style, review_threshold=None),
        ),
        review=review,
    )
    return {
        "plain": export(run_dir, work / "plain.onnx"),
        "review": export(run_dir, work / "review.onnx", reviewed),
    }


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tiny_catalog(tmp_path_factory.mktemp("attr-catalog"), 12, seed=5)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


def parts(out) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("part-*.parquet")))


def test_run_writes_a_column_per_attribute(models, catalog, tmp_path, attribute_run):
    out = tmp_path / "out"
    run(models["plain"], [catalog], out, workers=0, max_error_rate=1.0)
    table = parts(out)
    schema = table.schema
    assert schema.names[: len(TODAY)] == [n for n, _ in TODAY]
    assert schema.field("color").type == pa.string() and schema.field("color_score").type == pa.float32()
    assert schema.field("style").type == pa.list_(pa.string())
    assert schema.field("style_score").type == pa.list_(pa.float32())
    assert "review_reason" not in schema.names  # no review section in this card
    rows = {r["id"]: r for r in table.to_pylist()}
    assert rows["broken.jpg"]["status"] == "error"
    assert all(rows["broken.jpg"][c] is None for c in ("color", "color_score", "style", "style_score"))
    _, card = attribute_run
    color, style = card.attributes
    session, _ = create_session(models["plain"], "cpu")
    from skutag.exporter.samples import load_files

    good = sorted(i for i, r in rows.items() if r["status"] == "ok")
    pixels = load_files([catalog / i for i in good], card, str(catalog)).pixels
    probs_color, probs_style = session.run(["attr.color", "attr.style"], {"image": pixels})
    for i, name in enumerate(good):
        row = rows[name]
        assert row["color"] == color.values[int(probs_color[i].argmax())]
        assert row["color_score"] == pytest.approx(float(probs_color[i].max()), abs=1e-5)
        given = [v for v, p, t in zip(style.values, probs_style[i], style.thresholds, strict=True) if p >= t]
        assert sorted(row["style"]) == sorted(given)
        assert row["style_score"] == sorted(row["style_score"], reverse=True)  # most probable first
        assert len(row["style_score"]) == len(row["style"])


def test_the_review_queue_names_the_attribute(models, catalog, tmp_path):
    out = tmp_path / "out"
    run(models["review"], [catalog], out, workers=0, max_error_rate=1.0)
    table = parts(out)
    assert {"color", "style", "ood_score", "review", "review_reason"} <= set(table.schema.names)
    rows = table.to_pylist()
    flagged = [r for r in rows if r["status"] == "ok" and r["color_score"] < 0.9]
    assert flagged, "the threshold of 0.9 should flag some rows of this soft head"
    for row in rows:
        if row["status"] != "ok":
            assert row["review"] is None and row["review_reason"] is None
            continue
        low = row["color_score"] < 0.9
        assert row["review"] is low
        assert (row["review_reason"] or "") == ("low_confidence:color" if low else "")
    since = tmp_path / "since"
    run(models["review"], [catalog], since, workers=0, max_error_rate=1.0, since=str(out))
    again = {r["id"]: r for r in parts(since).to_pylist()}
    for row in rows:  # copied by --since: the attribute columns and reasons as they were
        copy = again[row["id"]]
        assert (copy["color"], copy["style"], copy["review_reason"]) == (
            row["color"],
            row["style"],
            row["review_reason"],
        )


@pytest.mark.slow
def test_the_ray_engine_writes_the_same_attribute_columns(models, catalog, tmp_path):
    import sys

    from tests.batchrun.support import run_ray_cli

    pytest.importorskip("ray")
    run(models["review"], [catalog], tmp_path / "local", max_error_rate=1.0)
    run_ray_cli([
        sys.executable, "-m", "skutag", "run", str(models["review"]), str(catalog), "--out", str(tmp_path / "ray"),
        "--engine", "ray", "--max-error-rate", "1", "--no-progress",
    ])  # fmt: skip
    local = {r["id"]: r for r in parts(tmp_path / "local").to_pylist()}
    ray = {r["id"]: r for r in parts(tmp_path / "ray").to_pylist()}
    assert local.keys() == ray.keys()
    for key, want in local.items():
        got = ray[key]
        for column in ("color", "style", "review", "review_reason"):
            assert got[column] == want[column], (key, column)
        assert got["color_score"] == pytest.approx(want["color_score"], abs=1e-5)


def test_shards_and_the_similar_index_work_as_before(models, catalog, tmp_path):
    from skutag.insight.index import load_index
    from skutag.insight.similar import image_queries, similar

    from tests.support.cli import skutag

    out = tmp_path / "out"
    for shard in ("0/2", "1/2"):
        run(models["review"], [catalog], out, shard=shard, workers=0, max_error_rate=1.0, embeddings=True,
            part_rows=4)  # fmt: skip
    assert (out / "_SUCCESS").exists() and len(list(out.glob("part-*.parquet"))) >= 2
    table = parts(out)
    ok = [r for r in table.to_pylist() if r["status"] == "ok"]
    assert ok and all(r["color"] is not None and r["embedding"] is not None for r in ok)
    # a sharded OUT has no OUT/_summary.json naming its model: --model (as without heads)
    result = skutag("index", out, "--out", tmp_path / "idx", "--model", models["review"])
    assert result.returncode == 0, result.stderr
    index = load_index(tmp_path / "idx")
    first = ok[0]["id"]
    found = similar(index, image_queries(index, [str(catalog / first)]), 3)
    assert found.column("id")[0].as_py() == first  # the image answers itself first: the index as before
