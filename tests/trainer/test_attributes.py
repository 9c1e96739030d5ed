"""Attributes for training: --attributes parsing, the manifest's values and masks, the split by product,
the masked loss, thresholds, temperatures, per-attribute metrics and the multi-head model on disk."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from skutag.trainer import attributes, groups, head_calibration, head_losses, head_metrics
from skutag.trainer.attributes import AttributeSpec, Encoded, HeadData

from skutag.errors import InputError
from skutag.heads import MULTI, SINGLE, AttributeHead

CATALOG = Path(__file__).resolve().parents[3] / "shared" / "data" / "catalog-photos"


def write_manifest(folder: Path, rows: list[dict[str, str]]) -> Path:
    path = folder / "attributes.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


ROWS = [
    {"path": "a/p1-0.jpg", "label": "a", "color": "Red", "style": "Hoodie|Full zip", "fit": ""},
    {"path": "a/p1-1.jpg", "label": "a", "color": "Red", "style": "Hoodie", "fit": "Slim"},
    {"path": "b/p2-0.jpg", "label": "b", "color": "", "style": "", "fit": "Loose"},
    {"path": "b/p3-0.jpg", "label": "b", "color": "Blue", "style": "Crew", "fit": "Slim"},
]


def test_parse_attributes_kinds_and_refusals():
    specs = attributes.parse_attributes("color, style:multi,fit:single")
    assert specs == [AttributeSpec("color"), AttributeSpec("style", MULTI), AttributeSpec("fit", SINGLE)]
    for bad, phrase in [
        ("color,,style", "empty name"),
        ("Color", "lowercase"),
        ("score", "already writes"),
        ("color:many", "single or multi"),
        ("color,color", "twice"),
    ]:
        with pytest.raises(InputError, match=phrase):
            attributes.parse_attributes(bad)


def test_values_masks_and_auto_multi(tmp_path):
    manifest = write_manifest(tmp_path, ROWS)
    specs = attributes.parse_attributes("color,style,fit")
    table = attributes.read_attributes(manifest, specs)
    paths = [str(tmp_path / r["path"]) for r in ROWS]
    assert table[paths[0]]["style"] == ("Hoodie", "Full zip")
    assert table[paths[2]]["color"] == ()  # empty cell: missing, not a value
    heads = {h.name: h for h in attributes.decide_heads(specs, paths, table)}
    assert heads["color"] == HeadData("color", SINGLE, ("Blue", "Red"))
    assert heads["style"] == HeadData("style", MULTI, ("Crew", "Full zip", "Hoodie"))  # a `|` makes it multi
    color = attributes.encode(heads["color"], paths, table)
    assert color.targets.tolist() == [1, 1, -1, 0] and color.mask.tolist() == [True, True, False, True]
    style = attributes.encode(heads["style"], paths, table)
    assert style.targets[0].tolist() == [0, 1, 1] and style.mask.tolist() == [True, True, False, True]
    with pytest.raises(InputError, match="style:multi"):
        attributes.decide_heads([AttributeSpec("style", SINGLE)], paths, table)
    with pytest.raises(InputError, match="no column material"):
        attributes.read_attributes(manifest, [AttributeSpec("material")])


def test_values_unseen_in_training_are_masked(tmp_path):
    manifest = write_manifest(tmp_path, ROWS)
    specs = [AttributeSpec("color")]
    table = attributes.read_attributes(manifest, specs)
    paths = [str(tmp_path / r["path"]) for r in ROWS]
    head = HeadData("color", SINGLE, ("Red", "White"))
    encoded = attributes.encode(head, paths, table)
    assert encoded.mask.tolist() == [True, True, False, False]  # Blue was never trained: not a target


def test_split_by_prefix_and_column_keeps_products_together(tmp_path):
    rule = groups.SplitBy.parse("prefix:-")
    assert rule.group("Women/wb01-black_main.jpg") == "wb01"
    assert rule.group("plain.jpg") == "plain"
    rows = [dict(r, product=r["path"].split("/")[1][:2]) for r in ROWS]
    manifest = write_manifest(tmp_path, rows)
    by_column = groups.read_groups(manifest, groups.SplitBy.parse("product"))
    assert by_column[str(tmp_path / "a/p1-1.jpg")] == "p1"
    with pytest.raises(InputError, match="no such column"):
        groups.read_groups(manifest, groups.SplitBy.parse("sku"))
    with pytest.raises(InputError, match="separator"):
        groups.SplitBy.parse("prefix:")


@pytest.mark.skipif(not (CATALOG / "attributes.csv").is_file(), reason="the shared catalog photos are absent")
def test_split_by_product_on_the_catalog():
    manifest = CATALOG / "attributes.csv"
    products = groups.read_groups(manifest, groups.SplitBy.parse("prefix:-"))
    rows = list(csv.DictReader(manifest.open()))
    paths = [str(CATALOG / r["path"]) for r in rows]
    labels = [r["label"] for r in rows]
    keys = [products[p] for p in paths]
    assert 50 < len(set(keys)) < len(rows)  # several photos per product
    seen_in_val: list[str] = []
    for train, val in groups.grouped_folds(labels, keys, 5, seed=0):
        train_products = {keys[i] for i in train}
        val_products = {keys[i] for i in val}
        assert not train_products & val_products
        assert len(train) + len(val) == len(rows)
        seen_in_val += sorted(val_products)
    assert sorted(seen_in_val) == sorted(set(keys))  # each product validated exactly once
    train, val = groups.grouped_split(labels, keys, 0.2, seed=1)
    assert not {keys[i] for i in train} & {keys[i] for i in val}
    assert 0.1 < len(val) / len(rows) < 0.3


def test_masked_loss_ignores_missing_rows():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, requires_grad=True)
    targets = torch.tensor([0, 2, -1, 1])
    mask = targets >= 0
    loss = head_losses.head_loss(SINGLE, logits, targets, mask, None)
    expected = torch.nn.functional.cross_entropy(logits[[0, 1, 3]], targets[[0, 1, 3]])
    assert torch.allclose(loss, expected)
    loss.backward()
    assert torch.all(logits.grad[2] == 0)  # the missing row teaches nothing
    multi = torch.randn(3, 2, requires_grad=True)
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    m = torch.tensor([True, False, True])
    loss = head_losses.head_loss(MULTI, multi, y, m, None)
    assert torch.allclose(loss, torch.nn.functional.binary_cross_entropy_with_logits(multi[m], y[m]))
    empty = head_losses.head_loss(SINGLE, logits, targets, torch.zeros(4, dtype=torch.bool), None)
    assert float(empty.detach()) == 0.0 and empty.requires_grad  # DDP: the head is still in the graph


def test_class_balance_per_head():
    single = Encoded(np.array([0, 0, 0, 1, -1]), np.array([True, True, True, True, False]))
    weights = head_losses.balance(HeadData("c", SINGLE, ("a", "b")), single)
    assert weights.tolist() == pytest.approx([4 / 6, 4 / 2])  # n / (k * count), missing left out
    multi = Encoded(
        np.array([[1, 0], [1, 1], [1, 0], [0, 0]], np.float32), np.array([True, True, True, False])
    )
    pos = head_losses.balance(HeadData("s", MULTI, ("x", "y")), multi)
    assert pos.tolist() == pytest.approx([1 / head_losses.MAX_POS_WEIGHT, 2.0])  # 0/3 capped, 2/1
    heads = {"c": HeadData("c", SINGLE, ("a", "b"))}
    total, parts = head_losses.attribute_loss(
        {"c": torch.zeros(5, 2)}, {"c": (torch.from_numpy(single.targets), torch.from_numpy(single.mask))},
        heads, {"c": weights},
    )  # fmt: skip
    assert float(total) == pytest.approx(np.log(2)) and parts["c"] == pytest.approx(np.log(2))


def test_best_f1_thresholds():
    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.4, 0.65], [0.1, 0.1]])
    targets = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    thresholds = head_calibration.best_f1_thresholds(probs, targets)
    assert thresholds[0] == pytest.approx(0.5)  # between 0.6 (positive) and 0.4 (negative)
    assert thresholds[1] == pytest.approx(0.425)  # both positives above, every negative below
    head = AttributeHead("s", MULTI, ("x", "y"), tuple(thresholds))
    assert (head.given(probs) == targets.astype(bool)).all()
    none = head_calibration.best_f1_thresholds(np.array([[0.3], [0.8]]), np.array([[0], [0]]))
    assert none.tolist() == [0.5]  # a value nobody has keeps 0.5


def test_temperature_and_finished_heads():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, 400)
    logits = rng.normal(size=(400, 3))
    logits[np.arange(400), targets] += 2.0
    encoded = Encoded(targets, np.ones(400, bool))
    base = head_calibration.fit_temperature(SINGLE, logits, encoded)
    sharp = head_calibration.fit_temperature(SINGLE, logits * 5, encoded)
    assert sharp / base == pytest.approx(5, rel=0.05)  # five times overconfident: five times the temperature
    assert (
        head_calibration.fit_temperature(SINGLE, logits[:0], Encoded(targets[:0], np.zeros(0, bool))) == 1.0
    )
    multi_y = (rng.random((400, 2)) < 0.3).astype(np.float32)
    multi_logits = (multi_y * 2 - 1) * 1.5 + rng.normal(size=(400, 2))
    heads = head_calibration.finish_heads(
        [HeadData("color", SINGLE, ("a", "b", "c")), HeadData("style", MULTI, ("x", "y"))],
        {"color": logits, "style": multi_logits},
        {"color": encoded, "style": Encoded(multi_y, np.ones(400, bool))},
    )
    assert heads[0].thresholds is None and heads[1].thresholds is not None
    assert all(0 < t < 1 for t in heads[1].thresholds) and heads[0].review_threshold is not None
    assert not [p for h in heads for p in h.problems()]


def test_metrics_per_attribute():
    single = AttributeHead("color", SINGLE, ("a", "b"))
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.5, 0.5]])
    encoded = Encoded(np.array([0, 1, 1, -1]), np.array([True, True, True, False]))
    figures = head_metrics.head_metrics(single, probs, encoded)
    assert figures["accuracy"] == pytest.approx(2 / 3) and figures["missing"] == 1
    assert figures["confusion"] == [[1, 0], [1, 1]]
    assert set(figures) >= {"accuracy", "macro_f1", "map", "micro_f1"}
    multi = AttributeHead("style", MULTI, ("x", "y"), (0.5, 0.5))
    y = np.array([[1, 0], [1, 1], [0, 1]], np.float32)
    p = np.array([[0.9, 0.2], [0.8, 0.6], [0.3, 0.4]])
    figures = head_metrics.attribute_metrics([multi], {"style": p}, {"style": Encoded(y, np.ones(3, bool))})[
        "style"
    ]
    assert figures["map"] == pytest.approx(1.0)  # every positive ranked above every negative
    assert figures["micro_f1"] == pytest.approx(2 * 3 / (3 + 4))  # 3 right of 3 given, 4 true
    assert figures["accuracy"] == pytest.approx(2 / 3)


def test_multi_head_model_saves_and_loads(tmp_path):
    from skutag.trainer.model import build_model
    from skutag.trainer.multihead import AttributeModel
    from skutag.trainer.weights import load_trained, save_weights

    from skutag.card import ModelCard

    heads = (
        AttributeHead("color", SINGLE, ("a", "b", "c")),
        AttributeHead("style", MULTI, ("x", "y"), (0.4, 0.6)),
    )
    card = ModelCard.for_training("resnet18", ["p", "q"], image_size=32, attributes=heads)
    torch.manual_seed(0)
    model = AttributeModel.wrap(build_model("resnet18", 2), heads).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        outputs = model(x, all_heads=True)
        assert {k: tuple(v.shape) for k, v in outputs.items()} == {
            "label": (2, 2),
            "color": (2, 3),
            "style": (2, 2),
        }
        assert torch.equal(model(x), outputs["label"])
    save_weights(tmp_path / "best.safetensors", model, card)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "best.safetensors"), "pt") as f:
        keys = set(f.keys())
    plain = set(build_model("resnet18", 2).state_dict())
    assert keys - plain == {"attributes.color.weight", "attributes.color.bias", "attributes.style.weight",
                            "attributes.style.bias"}  # fmt: skip
    assert plain <= keys  # the plain classifier's keys, as a model without attributes saves them
    loaded, loaded_card = load_trained(tmp_path)
    assert loaded_card.attributes == heads
    with torch.no_grad():
        again = loaded(x, all_heads=True)
    assert all(torch.allclose(again[k], outputs[k]) for k in outputs)
