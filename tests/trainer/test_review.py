"""The review section's statistics (trainer.review): photos the model never saw are flagged at the rate the
card states. skutag 0.4 fitted the class means and the thresholds on the same validation photos, so held-out
photos scored above thresholds fitted to the photos that had defined the means (issue 29: 47 of 83 demo
photos flagged); the means now come from the training features, the thresholds from validation."""

from __future__ import annotations

import numpy as np
from skutag.trainer.review import review_figures, review_section

from skutag.review_stats import ood_scores

CLASSES, DIM = 5, 256


def _clustered(
    rows_per_class: int, rng: np.random.Generator, centres: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Features around each class centre with noise much larger than the distance a few photos average out."""
    labels = np.repeat(np.arange(CLASSES), rows_per_class)
    return centres[labels] + rng.normal(0, 1.0, (len(labels), DIM)), labels


def _probs(features: np.ndarray, centres: np.ndarray) -> np.ndarray:
    logits = features @ centres.T / 4
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_held_out_rows_are_flagged_at_the_rate_the_card_states():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 0.35, (CLASSES, DIM))
    train = _clustered(200, rng, centres)
    val = _clustered(40, rng, centres)  # 200 validation rows: few per class, as in a real split
    held = _clustered(400, rng, centres)  # 2,000 rows the trainer never saw
    section = review_section(*train, *val, _probs(val[0], centres), CLASSES, rate=0.10)
    assert section["statistics"] == "train" and section["target_rate"] == 0.10
    figures = review_figures(
        section, _probs(held[0], centres), ood_scores(held[0], section["class_means"]), held[1]
    )
    rate = figures["flagged"] / figures["rows"]
    assert 0.06 <= rate <= 0.14, (
        rate
    )  # today's code flagged most of them (means fitted on the validation rows)
    assert section["validation"]["flagged"] <= 0.10 * section["validation"]["rows"]
    reasons = figures["reasons"]
    assert reasons["low_confidence"]["flagged"] > 0 and reasons["out_of_distribution"]["flagged"] > 0


def test_means_fitted_on_the_validation_rows_would_flag_far_more_held_out_rows():
    """The bias itself, shown on the same features: the old recipe (means and thresholds from one set)."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 0.35, (CLASSES, DIM))
    val = _clustered(40, rng, centres)
    held = _clustered(400, rng, centres)
    biased = review_section(*val, *val, _probs(val[0], centres), CLASSES, rate=0.10)
    scores = ood_scores(held[0], biased["class_means"])
    # The old queue: the OOD threshold aimed at 5% of in-distribution rows; held-out rows pass it 5x as often.
    assert (scores > biased["ood_threshold"]).mean() > 0.25


def test_figures_count_wrong_predictions_caught_per_reason():
    section = {"confidence_threshold": 0.6, "ood_threshold": 0.5}
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.3, 0.7], [0.8, 0.2]])
    figures = review_figures(section, probs, np.array([0.1, 0.1, 0.9, 0.7]), np.array([0, 1, 0, 0]))
    assert figures == {
        "rows": 4,
        "flagged": 3,
        "wrong": 2,
        "wrong_caught": 2,
        "reasons": {
            "low_confidence": {"flagged": 1, "wrong_caught": 1},
            "out_of_distribution": {"flagged": 2, "wrong_caught": 1},
        },
    }


def test_cards_with_the_old_section_still_read_and_a_new_section_is_checked():
    """A 0.3/0.4 section (means and thresholds from validation, five keys) is a valid card as it was;
    the new keys are checked, and anything else is refused."""
    import pytest

    from skutag.card import CardError, ModelCard

    old = {"score": "1-max-cosine", "class_means": [[1.0, 0.0], [0.0, 1.0]], "ood_threshold": 0.4, "tpr": 0.95,
           "confidence_threshold": 0.3}  # fmt: skip
    card = ModelCard.for_training("resnet18", ["a", "b"], review=old)
    assert ModelCard.from_json(card.to_json()).review == old
    new = old | {"statistics": "train", "target_rate": 0.1, "validation": {"rows": 4, "flagged": 0}}
    assert ModelCard.from_json(card.replace(review=new).to_json()).review == new
    for bad in ({"target_rate": 1.5}, {"statistics": "test"}, {"bank": "AAAA"}):
        with pytest.raises(CardError, match="review"):
            card.replace(review=new | bad)
