"""The parity figures and gates on synthetic probability arrays: per image, so they fire at 2 classes and at 1,000.

A gate on the mean |dprob| over images x classes (the old one) is bounded by 2/K and
could not see a broken model with many classes; the per-image total variation (TV)
does not depend on K. Broken models: every image's probability moved to another
class, a scrambled head (logit columns permuted), and probabilities pulled halfway
to uniform with the top-1 class kept. A good model (small logit noise, as int8
rounding gives) passes at every K.
"""

from __future__ import annotations

import numpy as np
import pytest
from skutag.exporter.parity import compare, total_variation

from skutag import artifacts
from skutag.artifacts import TARGETS

CLASSES = (2, 100, 1000)
IMAGES = 200
INT8 = ("int8-cpu", "int8-tensorrt")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def reference_logits(k: int, seed: int = 0) -> np.ndarray:
    """A trained-looking model: logits N(0, 2^2), one class ahead by log(K) + 2 + U(0, 3)."""
    rng = np.random.default_rng(seed)
    logits = 2.0 * rng.standard_normal((IMAGES, k))
    logits[np.arange(IMAGES), rng.integers(0, k, IMAGES)] += np.log(k) + 2.0 + rng.uniform(0, 3, IMAGES)
    return logits


def failures(k: int, exported: np.ndarray, target: str) -> list[str]:
    return compare(softmax(reference_logits(k)), exported.astype(np.float32)).failures(TARGETS[target].limits)


@pytest.mark.parametrize("target", INT8)
@pytest.mark.parametrize("k", CLASSES)
def test_a_good_int8_model_passes(k, target):
    logits = reference_logits(k)
    noisy = logits + np.random.default_rng(1).normal(0, 0.1, logits.shape)  # int8-like logit error
    assert failures(k, softmax(noisy), target) == []


@pytest.mark.parametrize("target", INT8)
@pytest.mark.parametrize("k", CLASSES)
def test_probabilities_moved_to_another_class_fail(k, target):
    moved = np.roll(softmax(reference_logits(k)), 1, axis=1)
    problems = failures(k, moved, target)
    assert any("top-1" in p for p in problems)
    assert any("TV" in p for p in problems), problems  # the per-image figure sees it too, at any K


@pytest.mark.parametrize("target", INT8)
@pytest.mark.parametrize("k", CLASSES)
def test_a_scrambled_head_fails(k, target):
    logits = reference_logits(k)
    permutation = np.roll(np.arange(k), k // 2)  # every class's logit comes from another class
    problems = failures(k, softmax(logits[:, permutation]), target)
    assert any("TV" in p for p in problems) and any("top-1" in p for p in problems), problems


@pytest.mark.parametrize("k", (100, 1000))
def test_probabilities_pulled_to_uniform_fail_by_tv_where_the_mean_could_not(k):
    reference = softmax(reference_logits(k))
    flattened = 0.25 * reference + 0.75 / k  # top-1 kept on every image
    parity = compare(reference, flattened.astype(np.float32))
    problems = parity.failures(TARGETS["int8-cpu"].limits)
    assert parity.top1_agreement == 1.0 and problems and all("TV" in p for p in problems)
    mean_abs_dprob = np.abs(reference - flattened).mean()  # the old gate (< 0.04) passed this model
    assert mean_abs_dprob < 2 / k <= 0.02


def test_total_variation_is_half_the_l1_distance_and_bounded_by_one():
    a = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    b = np.array([[0.0, 1.0, 0.0], [0.5, 0.25, 0.25]])
    np.testing.assert_allclose(total_variation(a, b), [1.0, 0.25])
    assert total_variation(a, a).max() == 0


@pytest.mark.parametrize("k", CLASSES)
def test_one_confident_image_moved_completely_fails_the_max(k):
    reference = softmax(reference_logits(k))
    one_flip = reference.copy()
    worst = reference.max(axis=1).argmax()  # the most confident image, moved to another class
    one_flip[worst] = np.roll(reference[worst], 1)
    parity = compare(reference, one_flip)
    assert parity.top1_agreement == 0.995  # agreement and p99 alone would let it through
    assert parity.failures(TARGETS["int8-cpu"].limits) == [f"max per-image TV {parity.max_tv:.3g} >= 0.9"]


def test_parity_figures():
    reference = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype=np.float32)
    same = compare(reference, reference)
    assert same.max_tv == 0 and same.top1_agreement == 1 and same.top5_overlap == 1 and same.k == 3
    assert same.max_embedding_error is None
    flipped = compare(reference, np.array([[0.2, 0.7, 0.1], [0.1, 0.3, 0.6]], dtype=np.float32))
    # image 0: |dprob| 0.5 + 0.5 + 0 -> TV 0.5; image 1: 0
    assert flipped.top1_agreement == 0.5 and flipped.max_tv == pytest.approx(0.5)
    assert flipped.mean_tv == pytest.approx(0.25)
    assert flipped.failures(artifacts.TARGETS["fp32"].limits)
    assert not same.failures(artifacts.TARGETS["int8-cpu"].limits)


def test_embedding_error_is_relative_per_image():
    probs = np.full((2, 3), 1 / 3, dtype=np.float32)
    embedding = np.array([[3.0, 4.0], [30.0, 40.0]], dtype=np.float32)
    moved = embedding + np.array([[0.5, 0.0], [0.5, 0.0]], dtype=np.float32)
    parity = compare(probs, probs, embedding, moved)
    assert parity.max_embedding_error == pytest.approx(0.1) and parity.p99_embedding_error < 0.1
    limits = artifacts.TARGETS["fp32"].limits
    assert any("embedding" in problem for problem in parity.failures(limits))
