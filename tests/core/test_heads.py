"""Attribute heads in the model card: validation, round trip, and cards without heads unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skutag.card import CardError, ModelCard
from skutag.heads import MULTI, SINGLE, AttributeHead


def test_card_without_attributes_is_as_before():
    card = ModelCard.for_training("resnet18", ["a", "b"])
    data = json.loads(card.to_json())
    assert "attributes" not in data and "attributes" not in card.to_dict()
    assert ModelCard.from_json(card.to_json()) == card


def test_card_with_heads_round_trips():
    heads = [
        {"name": "color", "kind": "single", "values": ["Black", "Red"], "temperature": 1.4},
        AttributeHead("style", MULTI, ("Hoodie", "Full zip"), (0.3, 0.6), review_threshold=0.1),
    ]
    card = ModelCard.for_training("resnet18", ["a", "b"], attributes=heads)
    assert isinstance(card.attributes[0], AttributeHead) and card.attributes[0].temperature == 1.4
    data = json.loads(card.to_json())
    assert data["attributes"][1] == {
        "name": "style",
        "kind": "multi",
        "values": ["Hoodie", "Full zip"],
        "thresholds": [0.3, 0.6],
        "temperature": 1.0,
        "review_threshold": 0.1,
    }
    assert ModelCard.from_json(card.to_json()) == card
    assert card.to_dict()["attributes"] == data["attributes"]


@pytest.mark.parametrize(
    ("head", "phrase"),
    [
        ({"name": "style", "kind": "multi", "values": ["a", "b"]}, "one threshold per value"),
        ({"name": "color", "kind": "single", "values": ["a", "b"], "thresholds": [0.5, 0.5]}, "only multi"),
        ({"name": "color", "kind": "single", "values": ["a"]}, "at least 2"),
        ({"name": "label", "kind": "single", "values": ["a", "b"]}, "already writes"),
        ({"name": "color", "kind": "sometimes", "values": ["a", "b"]}, "kind must be"),
        ({"name": "color", "kind": "single", "values": ["a", "b"], "temperature": 0}, "temperature"),
        ({"name": "color", "kind": "single", "values": ["a", "b"], "colour": 1}, "unknown fields"),
    ],
)
def test_bad_heads_are_refused(head, phrase):
    with pytest.raises(CardError, match=phrase):
        ModelCard.for_training("resnet18", ["a", "b"], attributes=[head])


def test_repeated_names_are_refused():
    head = {"name": "color", "kind": "single", "values": ["a", "b"]}
    with pytest.raises(CardError, match="unique"):
        ModelCard.for_training("resnet18", ["a", "b"], attributes=[head, head])


def test_given_and_confidence():
    single = AttributeHead("color", SINGLE, ("a", "b", "c"))
    probs = np.array([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]])
    assert single.given(probs).tolist() == [[False, True, False], [True, False, False]]
    assert single.confidence(probs).tolist() == pytest.approx([0.5, 0.9])
    multi = AttributeHead("style", MULTI, ("x", "y"), (0.4, 0.8))
    p = np.array([[0.4, 0.1], [0.7, 0.9]])
    assert multi.given(p).tolist() == [[True, False], [True, True]]
    # on its threshold: 0; halfway to certainty: 0.5 (the least decided value counts)
    assert multi.confidence(p).tolist() == pytest.approx([0.0, 0.5])
    assert multi.output == "attr.style" and multi.score_column == "style_score"
