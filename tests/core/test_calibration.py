"""Temperature scaling and the expected calibration error (skutag.calibration), and the card's temperature."""

from __future__ import annotations

import numpy as np
import pytest

from skutag import calibration
from skutag.card import CardError, ModelCard


def _overconfident(rows: int = 4000, classes: int = 5, true_t: float = 3.0, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / true_t): a model `true_t` times too sure."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4.0, (rows, classes))
    p = calibration.softmax(logits / true_t)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return logits, labels


def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_with():
    logits, labels = _overconfident(true_t=3.0)
    t = calibration.fit_temperature(logits, labels)
    assert 2.6 < t < 3.4
    nll = lambda temp: -np.log(calibration.softmax(logits / temp)[np.arange(len(labels)), labels]).mean()  # noqa: E731
    assert nll(t) <= min(nll(t * 0.9), nll(t * 1.1), nll(1.0))


def test_ece_is_lower_after_temperature_scaling_of_an_overconfident_model():
    logits, labels = _overconfident(seed=1)
    fit, held = slice(0, 2000), slice(2000, None)  # fitted on one half, measured on the other
    t = calibration.fit_temperature(logits[fit], labels[fit])
    before = calibration.ece(calibration.softmax(logits[held]), labels[held])
    after = calibration.ece(calibration.softmax(logits[held] / t), labels[held])
    assert before > 0.15 and after < 0.05 and after < before / 3


def test_retemper_moves_between_raw_and_calibrated_probabilities():
    logits, _ = _overconfident(rows=50)
    raw, calibrated = calibration.softmax(logits), calibration.softmax(logits / 2.5)
    np.testing.assert_allclose(calibration.retemper(raw, 1 / 2.5), calibrated, atol=1e-9)
    np.testing.assert_allclose(calibration.retemper(calibrated, 2.5), raw, atol=1e-9)


def test_reliability_bins_count_every_row_and_a_perfect_model_has_no_error():
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.55, 0.45], [0.45, 0.55]])
    bins = calibration.reliability(probs, np.array([0, 1, 0, 0]))
    assert len(bins) == calibration.BINS and sum(b["rows"] for b in bins) == 4
    assert calibration.ece(probs[:2], np.array([0, 1])) == 0.0


def test_no_rows_or_extreme_rows_give_a_temperature_in_the_bracket():
    assert calibration.fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0
    right = np.array([[10.0, 0.0], [0.0, 10.0]])
    assert calibration.fit_temperature(right, np.array([0, 1])) == calibration.T_MIN


def test_the_card_keeps_its_temperature_and_refuses_a_bad_one():
    card = ModelCard.for_training("resnet18", ["a", "b"], temperature=1.7)
    assert ModelCard.from_json(card.to_json()).temperature == 1.7
    assert (
        "temperature" not in card.replace(temperature=None).to_dict()
    )  # older readers read uncalibrated cards
    for bad in (0.0, -1.0, float("nan"), True):
        with pytest.raises(CardError, match="temperature"):
            card.replace(temperature=bad)
