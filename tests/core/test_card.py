"""skutag.card: strict JSON round trip and clear errors for malformed or incompatible cards."""

from __future__ import annotations

import json

import pytest

from skutag.card import SCHEMA_VERSION, CardError, ModelCard


def make_card(**changes) -> ModelCard:
    return ModelCard.for_training("resnet50", ["bags", "mugs", "shoes"], image_size=224, **changes)


def test_round_trip_is_exact(tmp_path):
    card = make_card(metrics={"accuracy": 0.93}, provenance={"epochs": 3})
    assert ModelCard.from_json(card.to_json()) == card
    card.save(tmp_path / "card.json")
    assert ModelCard.load(tmp_path / "card.json") == card


def test_defaults_follow_torchvision_and_normalization():
    card = make_card()
    assert (card.image_size, card.resize_size) == (224, 256)
    assert card.mean == (0.485, 0.456, 0.406) and card.input_layout == "NHWC"
    symmetric = ModelCard.for_training("resnet18", ["a", "b"], image_size=128, normalize="symmetric")
    assert symmetric.mean == symmetric.std == (0.5, 0.5, 0.5) and symmetric.resize_size == 146


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(colour="red"), "unknown fields"),
        (lambda d: d.pop("arch"), "missing fields"),
        (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "newer than this skutag"),
        (lambda d: d.pop("schema_version"), "no schema_version"),
        (lambda d: d.update(classes=["only"]), "at least two"),
        (lambda d: d.update(classes=["a", "a"]), "unique"),
        (lambda d: d.update(image_size=300, resize_size=256), "resize_size"),
        (lambda d: d.update(std=[0.2, 0.0, 0.2]), "std must be positive"),
        (lambda d: d.update(precision="int4"), "precision"),
        (lambda d: d.update(input_dtype="uint8", input_layout="NCHW"), "layout"),
        (lambda d: d.update(precision="int8", int8_target="gpu"), "int8_target must be one of"),
        (lambda d: d.update(precision="fp16", int8_target="cpu"), "only for int8"),
    ],
)
def test_malformed_cards_are_refused_with_a_reason(mutate, message):
    data = make_card().to_dict()
    mutate(data)
    with pytest.raises(CardError, match=message):
        ModelCard.from_dict(data)


def test_not_json_is_a_card_error(tmp_path):
    with pytest.raises(CardError, match="not JSON"):
        ModelCard.from_json("{not json")
    with pytest.raises(CardError, match="JSON object"):
        ModelCard.from_json(json.dumps([1, 2]))


def test_card_errors_exit_with_code_2():
    assert CardError.exit_code == 2


def test_int8_target_round_trips_and_old_cards_still_read():
    card = make_card(precision="int8", int8_target="tensorrt")
    assert ModelCard.from_json(card.to_json()) == card
    assert json.loads(card.to_json())["int8_target"] == "tensorrt"
    # fp32/fp16 cards serialise exactly as before the field existed (earlier skutag reads them)
    assert "int8_target" not in make_card().to_dict()
    # an int8 card written before the target was recorded: read, target unknown
    old = card.to_dict()
    del old["int8_target"]
    assert ModelCard.from_dict(old).int8_target is None
