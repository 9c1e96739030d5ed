"""The review queue (issue 14): the trainer calibrates "in distribution" on the validation split, the
exporter keeps it in the card (with the `embedding` output), and `skutag run` adds `ood_score`, `review`
and `review_reason`; images of classes the model never saw are flagged far more often than new images
of the classes it learned. resnet18 has stages, so the section reads the graph's `domain_score` (issue 29:
the stage statistics' Gaussian); a shifted domain of the learned classes is flagged. Models without the
card section write exactly the old schema; a cosine section on a graph without the output runs as before."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
from skutag.batchrun.api import run_catalog
from skutag.batchrun.commit.writer import prediction_schema
from skutag.batchrun.options import RunOptions
from skutag.batchrun.plan.shard import Shard
from skutag.exporter.pipeline import ExportRequest, run_export
from skutag.trainer.config import TrainConfig
from skutag.trainer.train import train

from skutag.card import METADATA_KEY, ModelCard
from skutag.synth import SynthSpec, class_styles, make_catalog

FAST = dict(arch="resnet18", weights="none", image_size=64, batch_size=16, workers=0, seed=0)
SEEN = 4  # the model learns the first four synthetic classes; the next four (other shapes) are unseen
SIZES = dict(min_size=64, max_size=96)


def _split(catalog: Path, names: list[str], out: Path, subdirs: tuple[str, ...]) -> Path:
    for sub in subdirs:
        for name in names:
            shutil.copytree(catalog / sub / name if sub else catalog / name, out / sub / name)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("review")
    names = sorted(s.name for s in class_styles(2 * SEEN))
    seen = [s.name for s in class_styles(2 * SEEN)][:SEEN]
    unseen = [n for n in names if n not in seen]
    make_catalog(tmp / "synth", SynthSpec(count=240, classes=2 * SEEN, val_fraction=0.33, seed=3, **SIZES))
    data = _split(tmp / "synth", seen, tmp / "data", ("train", "val"))
    make_catalog(tmp / "fresh", SynthSpec(count=160, classes=2 * SEEN, seed=4, **SIZES))
    inside = _split(tmp / "fresh", seen, tmp / "inside", ("",))
    outside = _split(tmp / "fresh", unseen, tmp / "outside", ("",))
    run = tmp / "run"
    train(
        TrainConfig(
            data=str(data),
            out=str(run),
            freeze="none",
            epochs=4,
            lr=1e-3,
            ood_score="stage-statistics",
            **FAST,
        )
    )
    model = tmp / "model.onnx"
    run_export(ExportRequest(source=run, out=model, check=False))
    return {"run": run, "model": model, "inside": inside, "outside": outside, "tmp": tmp}


def _run(model: Path, source: Path, out: Path, **options):
    run_catalog(model, [str(source)], str(out), RunOptions(shard=Shard.parse("0/1"), **options))
    return pq.read_table(out)


def test_the_card_of_the_run_and_of_the_onnx_file_has_the_review_section(setup):
    card = ModelCard.load(setup["run"] / "card.json")
    review = card.review
    assert (
        review["score"] == "stage-statistics"  # resnet18 has stages: the domain score (issue 29)
        and review["stages"] == ["layer1", "layer2", "layer3", "layer4"]
        and review["rank"] == 16
        and review["statistics"] == "train"
        and review["target_rate"] == 0.10
    )
    assert 0.9 <= review["tpr"] <= 1.0  # the OOD threshold takes half the target rate on validation
    queue = review["validation"]
    assert (
        queue["rows"] > 0
        and queue["flagged"] <= 0.10 * queue["rows"]
        and 0 <= queue["wrong_caught"] <= queue["wrong"]
    )
    assert card.temperature is not None and card.temperature > 0
    assert len(review["class_means"]) == SEEN and len({len(m) for m in review["class_means"]}) == 1
    assert review["ood_threshold"] > 0 and 0 <= review["confidence_threshold"] <= 1
    proto = onnx.load(str(setup["model"]))
    exported = ModelCard.from_json({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    assert exported.review == review
    assert [o.name for o in proto.graph.output] == ["probs", "embedding", "domain_score"]
    assert ModelCard.from_json(card.to_json()) == card  # strict round trip with the section


def test_review_flags_unseen_classes_far_more_often_than_seen_ones(setup):
    tmp = setup["tmp"]
    inside = _run(setup["model"], setup["inside"], tmp / "out-inside")
    outside = _run(setup["model"], setup["outside"], tmp / "out-outside", embeddings=True)
    for table in (inside, outside):
        assert table.schema.field("ood_score").type == "float"
        assert table.schema.field("review").type == "bool"
        assert set(table.column("status").to_pylist()) == {"ok"}
    assert "embedding" not in inside.schema.names and "embedding" in outside.schema.names

    def rates(table) -> tuple[float, float]:
        reasons = [r or "" for r in table.column("review_reason").to_pylist()]
        flagged = np.array(table.column("review").to_pylist())
        assert all(bool(r) == f for r, f in zip(reasons, flagged, strict=True))
        assert all(set(r.split(",")) <= {"low_confidence", "out_of_distribution"} for r in reasons if r)
        ood = np.mean(["out_of_distribution" in r for r in reasons])
        return float(flagged.mean()), float(ood)

    inside_flagged, inside_ood = rates(inside)
    outside_flagged, outside_ood = rates(outside)
    print(
        f"in: review {inside_flagged:.2f} ood {inside_ood:.2f}; unseen: review {outside_flagged:.2f} ood {outside_ood:.2f}"
    )
    # Set for 5% OOD on ~40 validation images of a tiny 4-epoch model: the 95% quantile of 40 scores
    # moves a lot, and fresh images are a new draw, so the bound is loose (0.25, five times 1 - tpr).
    assert inside_ood <= 0.25
    # Unseen shapes sit away from every class mean: flagged at a clearly higher rate.
    assert outside_ood >= inside_ood + 0.3
    assert outside_flagged >= inside_flagged + 0.2
    scores = np.array(outside.column("ood_score").to_pylist())
    assert np.median(scores) > np.median(np.array(inside.column("ood_score").to_pylist()))


def _shifted(source: Path, out: Path) -> Path:
    """The same photos in another domain: half the contrast around mid-grey (another camera's exposure;
    the shapes and hues the classes differ by stay)."""
    from PIL import Image

    for path in sorted(source.rglob("*.*")):
        pixels = np.asarray(Image.open(path).convert("RGB"), np.float32)
        target = out / path.relative_to(source).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((128 + 0.5 * (pixels - 128)).astype(np.uint8)).save(target)
    return out


def test_the_domain_score_flags_photos_of_another_domain_and_matches_pytorch(setup):
    """Issue 29 wired end to end: the trainer's Gaussian of the stage statistics, the graph's `domain_score`
    (as PyTorch computes it), `skutag run` flagging a shifted domain of the learned classes."""
    import onnxruntime as ort
    import torch
    from PIL import Image
    from skutag.exporter.graph import ExportModule
    from skutag.trainer.weights import load_trained

    tmp = setup["tmp"]
    card = ModelCard.load(setup["run"] / "card.json")
    model, _ = load_trained(setup["run"])
    assert model.domain_fit is not None and model.domain_fit["basis"].shape[1] == card.review["rank"]
    images = sorted(setup["inside"].rglob("*.*"))[:6]
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB").resize((64, 64)), np.uint8) for p in images])
    with torch.no_grad():
        reference = ExportModule(model, card, embeddings=True).eval()(torch.from_numpy(pixels))[2].numpy()
    session = ort.InferenceSession(str(setup["model"]), providers=["CPUExecutionProvider"])
    (exported,) = session.run(["domain_score"], {"image": pixels})
    assert exported.shape == (len(images),)
    np.testing.assert_allclose(exported, reference, rtol=1e-3)

    from skutag.predict.model import open_model, predict_files

    # `skutag predict` of the run dir: its ExportModule has the extra output, the top-k is as before
    (row,) = predict_files(open_model(setup["run"]), [images[0]], topk=2)
    assert row.error is None and len(row.labels) == 2

    shifted = _shifted(setup["inside"], tmp / "shifted")
    inside = _run(setup["model"], setup["inside"], tmp / "out-domain-inside")
    other = _run(setup["model"], shifted, tmp / "out-domain-shifted")

    def ood(table) -> float:
        return float(
            np.mean(["out_of_distribution" in (r or "") for r in table.column("review_reason").to_pylist()])
        )

    print(f"out_of_distribution: in-domain {ood(inside):.2f}, shifted {ood(other):.2f}")
    # the threshold flags half the 10% target on validation; fresh in-domain photos stay near it
    assert ood(inside) <= 0.25
    assert ood(other) >= 0.8  # the other domain's exposure: the stage statistics see it


def test_a_cosine_card_and_a_graph_without_domain_score_run_as_before(setup):
    """An older export: the section of score 1-max-cosine, no `domain_score` output; `skutag run` scores
    the embedding against the class means; a domain card on a graph without the output is refused."""
    from skutag.batchrun.predict.model import read_contract

    from skutag.errors import InputError
    from skutag.review_stats import ood_scores

    card = ModelCard.load(setup["run"] / "card.json")
    review = {k: v for k, v in card.review.items() if k not in ("stages", "rank")}
    old_card = card.replace(review=review | {"score": "1-max-cosine", "ood_threshold": 0.05})
    proto = onnx.load(str(setup["model"]))
    outputs = [o for o in proto.graph.output if o.name != "domain_score"]
    del proto.graph.output[:]
    proto.graph.output.extend(outputs)
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = old_card.to_json()
    old = setup["tmp"] / "cosine.onnx"
    onnx.save(proto, str(old))
    table = _run(old, setup["inside"], setup["tmp"] / "out-cosine", embeddings=True)
    embedding = np.array(table.column("embedding").to_pylist(), np.float32)
    expected = ood_scores(embedding, np.asarray(review["class_means"], np.float32), np.float32)
    np.testing.assert_allclose(
        np.array(table.column("ood_score").to_pylist()), expected, rtol=1e-5, atol=1e-6
    )
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = card.to_json()
    onnx.save(proto, str(setup["tmp"] / "missing.onnx"))
    with pytest.raises(InputError, match="domain_score"):
        read_contract(setup["tmp"] / "missing.onnx")


def test_int8_export_of_a_domain_score_model_is_refused_before_any_work(setup, tmp_path):
    """8-bit activations change the stage statistics the Gaussian was fitted on (an int8 file's score was
    ~22x the fp32 one, uncorrelated): such an export would flag most rows, so it is refused in one line."""
    from skutag.errors import InputError

    request = ExportRequest(
        source=setup["run"], out=tmp_path / "q.onnx", precision="int8", calib_dir=setup["inside"], check=False
    )
    with pytest.raises(InputError, match="--ood-score stage-statistics"):
        run_export(request)
    assert not any(tmp_path.iterdir())


def test_a_model_without_the_section_writes_the_old_schema(setup):
    card = ModelCard.load(setup["run"] / "card.json")
    plain = card.replace(review=None)
    assert "review" not in plain.to_dict()
    metadata = {METADATA_KEY: plain.to_json()}
    assert prediction_schema(None, metadata).names == prediction_schema(None, {}).names
    assert "ood_score" not in prediction_schema(None, metadata).names
    with_section = prediction_schema(None, {METADATA_KEY: card.to_json()}).names
    assert with_section[-3:] == ["ood_score", "review", "review_reason"]
    proto = onnx.load(str(setup["model"]))
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = plain.to_json()
    old = setup["tmp"] / "plain.onnx"
    onnx.save(proto, str(old))
    table = _run(old, setup["inside"], setup["tmp"] / "out-plain")
    assert table.schema.names == prediction_schema(None, {}).names


def _manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = ["id,path,label"] + [",".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _reasons(table) -> dict[str, set[str]]:
    return {
        i: set((r or "").split(",")) - {""}
        for i, r in zip(
            table.column("id").to_pylist(), table.column("review_reason").to_pylist(), strict=True
        )
    }


def test_label_mismatch_flags_rows_whose_manifest_label_the_model_disagrees_with(setup):
    tmp = setup["tmp"]
    images = sorted(setup["inside"].rglob("*.*"))
    classes = sorted({p.parent.name for p in images})
    wrong = {c: classes[(classes.index(c) + 1) % len(classes)] for c in classes}
    rows = [(p.name, str(p), p.parent.name if n % 2 else wrong[p.parent.name]) for n, p in enumerate(images)]
    rows += [("same-photo", str(images[0]), images[0].parent.name), ("no-label", str(images[1]), "")]
    broken = tmp / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    rows.append(("broken", str(broken), classes[0]))
    given = {i: label or None for i, _, label in rows}
    plain = _run(
        setup["model"], _manifest(tmp / "plain.csv", [r[:2] + ("",) for r in rows]), tmp / "out-plain-m"
    )
    labelled = _run(setup["model"], _manifest(tmp / "labels.csv", rows), tmp / "out-labels")

    assert "manifest_label" in labelled.schema.names and "manifest_label" not in plain.schema.names
    got = labelled.to_pylist()
    assert {r["id"]: r["manifest_label"] for r in got} == given
    before, after = _reasons(plain), _reasons(labelled)
    mismatched = 0
    for row in got:
        if row["status"] != "ok":
            assert (row["review"], row["review_reason"], row["id"]) == (None, None, "broken")
            continue
        disagree = given[row["id"]] is not None and row["label"] != given[row["id"]]
        mismatched += disagree
        assert after[row["id"]] == before[row["id"]] | ({"label_mismatch"} if disagree else set()), row["id"]
        assert row["review"] == bool(after[row["id"]])
    # one decode, two ids, two labels: the reason follows each row's own label
    assert after[images[0].name] - {"label_mismatch"} == after["same-photo"] - {"label_mismatch"}
    assert ("label_mismatch" in after[images[0].name]) != ("label_mismatch" in after["same-photo"])
    assert mismatched >= len(images) // 3  # the model learnt these classes: most wrong labels disagree

    # --since: every photo unchanged, so every row is copied; the catalog relabelled half of them
    flipped = [(i, p, wrong[lab] if lab in wrong and n % 2 else lab) for n, (i, p, lab) in enumerate(rows)]
    since = run_catalog(
        setup["model"], [str(_manifest(tmp / "flipped.csv", flipped))], str(tmp / "out-flipped"),
        RunOptions(shard=Shard.parse("0/1"), since=str(tmp / "out-labels")),
    )  # fmt: skip
    assert (since.rows, since.reused, since.predicted) == (len(rows), len(rows), 0)
    again = pq.read_table(tmp / "out-flipped")
    new_given = {i: label or None for i, _, label in flipped}
    assert {r["id"]: r["manifest_label"] for r in again.to_pylist()} == new_given
    assert again.column("predicted_at").equals(labelled.column("predicted_at"))  # copied, not predicted
    for row in again.to_pylist():
        if row["status"] == "ok":
            disagree = new_given[row["id"]] is not None and row["label"] != new_given[row["id"]]
            assert ("label_mismatch" in _reasons(again)[row["id"]]) == disagree, row["id"]

    # and a manifest without labels: no manifest_label column, and no copied label_mismatch
    unlabelled = run_catalog(
        setup["model"], [str(tmp / "plain.csv")], str(tmp / "out-unlabelled"),
        RunOptions(shard=Shard.parse("0/1"), since=str(tmp / "out-labels")),
    )  # fmt: skip
    assert unlabelled.reused == len(rows)
    table = pq.read_table(tmp / "out-unlabelled")
    assert "manifest_label" not in table.schema.names and _reasons(table) == before


def test_eval_reports_calibration_and_the_queue_as_skutag_run_flags_it(setup):
    """`skutag eval` of the run dir and of its ONNX file: the ECE before and after temperature scaling and the
    review queue on the eval set (flagged, wrong caught, per reason), the same rows `skutag run` flags."""
    from skutag.trainer.evaluate import evaluate

    tmp, card = setup["tmp"], ModelCard.load(setup["run"] / "card.json")
    by_run = evaluate(setup["run"], setup["inside"], tmp / "eval-run", workers=0, gradcam=False)
    by_onnx = evaluate(setup["model"], setup["inside"], tmp / "eval-onnx", workers=0, gradcam=False)
    flagged = sum(_run(setup["model"], setup["inside"], tmp / "out-eval").column("review").to_pylist())
    for figures in (by_run, by_onnx):
        assert figures["temperature"] == card.temperature and 0 <= figures["ece"] <= 1
        assert 0 <= figures["ece_uncalibrated"] <= 1
        queue = figures["review"]
        assert queue["rows"] == figures["samples"] and set(queue["reasons"]) == {
            "low_confidence",
            "out_of_distribution",
        }
        assert abs(queue["flagged"] - flagged) <= 1  # the run's queue, up to float noise at a threshold
    assert abs(by_run["ece"] - by_onnx["ece"]) < 0.01
    assert (tmp / "eval-run" / "reliability.json").exists() and (
        tmp / "eval-run" / "reliability.png"
    ).exists()
