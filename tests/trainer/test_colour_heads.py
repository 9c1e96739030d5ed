"""The attribute heads' colour statistics (trainer.taps; issue 30): what they compute, that a head fitted the
trainer's way reads colour the pooled features do not carry, and that the card says what the heads read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skutag.card import ModelCard
from skutag.heads import COLOUR, MULTI, POOLED, SINGLE, AttributeHead

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def normalised(rgb: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> the network input (the Normalizer's)."""
    from skutag.normalize import normalize, pixel_scale

    mean, std = pixel_scale(MEAN, STD)
    return torch.from_numpy(normalize(rgb.transpose(0, 3, 1, 2).astype(np.float32), mean, std))


def test_colour_statistics_of_a_plain_red_photo():
    from skutag.trainer.taps import BINS, ColourStatistics

    image = np.zeros((1, 64, 64, 3), np.uint8)
    image[..., 0] = 255
    stats = ColourStatistics.for_card(MEAN, STD)(normalised(image))[0].numpy()
    assert stats.shape == (6 + BINS**3,)
    np.testing.assert_allclose(stats[:3], [1.0, 0.0, 0.0], atol=1e-4)  # mean per channel
    np.testing.assert_allclose(stats[3:6], 0.0, atol=2e-3)  # std per channel (plain)
    histogram = stats[6:].reshape(BINS, BINS, BINS)  # [r, g, b] cells
    assert histogram[BINS - 1, 0, 0] == pytest.approx(BINS**3, rel=1e-4)  # every pixel in the red corner
    assert histogram.sum() == pytest.approx(BINS**3, rel=1e-4)


def test_the_statistics_read_the_centre_not_the_border():
    from skutag.trainer.taps import ColourStatistics

    image = np.full((1, 64, 64, 3), 255, np.uint8)  # a white studio background ...
    image[:, 14:50, 14:50] = (0, 0, 255)  # ... and a blue garment in the middle (a third of the photo)
    stats = ColourStatistics.for_card(MEAN, STD)(normalised(image))[0].numpy()
    np.testing.assert_allclose(stats[:3], [0.0, 0.0, 1.0], atol=1e-4)  # the centre half: all blue


def synthetic_colours(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy photos of a garment in one of three colours on white (the colour is the label)."""
    rng = np.random.default_rng(seed)
    colours = np.array([(200, 30, 30), (30, 160, 40), (40, 50, 200)])
    labels = rng.integers(0, 3, n)
    images = np.full((n, 48, 48, 3), 245, np.float32)
    for i, label in enumerate(labels):
        top, left = rng.integers(8, 16, 2)
        images[i, top : top + 24, left : left + 24] = colours[label] * rng.uniform(0.6, 1.1)
    images += rng.normal(0, 25, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8), labels


@pytest.mark.parametrize("with_colour", [True, False])
def test_a_colour_head_fitted_the_trainers_way_reads_colour_the_pooled_features_lack(with_colour):
    """Pooled features that keep nothing of the colour (noise): the head fitted by AttributeTraining.fit_cached
    reads the colour from the statistics (folded back: the model reads raw inputs); without them, chance."""
    from skutag.trainer.attribute_training import AttributeTraining
    from skutag.trainer.attributes import Encoded, HeadData
    from skutag.trainer.features import CachedFeatures
    from skutag.trainer.head_losses import balance
    from skutag.trainer.model import build_model
    from skutag.trainer.multihead import AttributeModel
    from skutag.trainer.taps import ColourStatistics

    torch.manual_seed(0)
    colour = ColourStatistics.for_card(MEAN, STD) if with_colour else None
    model = AttributeModel.wrap(build_model("resnet18", 2), {"color": 3}, colour).eval()
    width = model.label_head.in_features
    head = HeadData("color", SINGLE, ("red", "green", "blue"))
    (train, y), (test, y_test) = synthetic_colours(150, 1), synthetic_colours(90, 2)
    encoded = Encoded(y, np.ones(len(y), bool))
    attrs = AttributeTraining([head], {"color": encoded}, {}, {"color": balance(head, encoded)}, 1.0)
    x = normalised(train)
    cache = CachedFeatures(
        torch.randn(len(y), width), torch.zeros(len(y), dtype=torch.long), torch.arange(len(y)), {},
        model.attribute_extra(x),
    )  # fmt: skip
    attrs.fit_cached(model, cache)
    with torch.no_grad():
        x_test = normalised(test)
        inputs = model.attribute_input(torch.randn(len(y_test), width), model.attribute_extra(x_test))
        accuracy = float((model.heads["color"](inputs).argmax(1).numpy() == y_test).mean())
    if with_colour:
        assert accuracy > 0.95
    else:
        assert accuracy < 0.6  # three colours: chance is a third


def test_the_model_and_card_say_what_the_heads_read(tmp_path):
    from skutag.trainer.model import build_model
    from skutag.trainer.multihead import AttributeModel
    from skutag.trainer.taps import ColourStatistics
    from skutag.trainer.weights import load_trained, save_weights

    reads = (POOLED, COLOUR)
    heads = (
        AttributeHead("color", SINGLE, ("a", "b", "c"), reads=reads),
        AttributeHead("style", MULTI, ("x", "y"), (0.4, 0.6), reads=reads),
    )
    card = ModelCard.for_training("resnet18", ["p", "q"], image_size=32, attributes=heads)
    assert ModelCard.from_json(card.to_json()).attributes == heads
    import json

    assert [h["reads"] for h in json.loads(card.to_json())["attributes"]] == [["pooled", "colour"]] * 2
    assert (
        "reads" not in AttributeHead("color", SINGLE, ("a", "b")).to_dict()
    )  # the default serialises as before
    torch.manual_seed(0)
    model = AttributeModel.wrap(
        build_model("resnet18", 2), heads, ColourStatistics.for_card(card.mean, card.std)
    )
    assert model.reads == reads and model.heads["color"].in_features == 512 + model.colour.dims
    model.eval()
    save_weights(tmp_path / "best.safetensors", model, card)
    loaded, _ = load_trained(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before, after = model(x, all_heads=True), loaded(x, all_heads=True)
    assert loaded.reads == reads
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)


def test_a_card_whose_heads_read_otherwise_than_the_model_is_refused():
    from skutag.exporter.heads import AttributeOutputs
    from skutag.trainer.model import build_model
    from skutag.trainer.multihead import AttributeModel

    from skutag.card import CardError
    from skutag.errors import InputError

    heads = (AttributeHead("color", SINGLE, ("a", "b", "c"), reads=(POOLED, COLOUR)),)
    card = ModelCard.for_training("resnet18", ["p", "q"], image_size=32, attributes=heads)
    model = AttributeModel.wrap(build_model("resnet18", 2), heads)  # no colour module
    with pytest.raises(InputError, match="read pooled\\+colour, the model's pooled"):
        AttributeOutputs.of(model, card)
    with pytest.raises(CardError, match="reads must be one of"):
        ModelCard.from_json(card.to_json().replace('"colour"', '"texture"'))
