"""The training recipe (trainer/recipe.py, trainer/views.py): the head's cache really holds every view of every
photo, fine-tuning stops as soon as it does not beat the head on validation (the head's weights are the best
ones) and goes on while it gains."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skutag.trainer.augment import Normalizer
from skutag.trainer.config import TrainConfig
from skutag.trainer.data import CatalogDataset, Sample
from skutag.trainer.features import extract_features, split_head
from skutag.trainer.model import build_model
from skutag.trainer.recipe import Phases, phases
from skutag.trainer.train import train
from skutag.trainer.views import ViewsDataset, flat_views, parse_views, view
from skutag.trainer.weights import read_card
from torch.utils.data import DataLoader

from skutag.card import ModelCard
from skutag.errors import InputError

FAST = dict(arch="resnet18", weights="none", image_size=32, batch_size=16, workers=0, seed=0, gradcam=False)
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    """Three classes anyone can tell apart (a plain colour, some noise): train/ 8 and val/ 4 photos a class."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 4)):
        for name, rgb in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(rgb) + rng.normal(0, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_fine_tuning_gate_counts_from_the_head_and_from_the_last_gain():
    gate = Phases(epochs=10, head_epochs=4, views=("center",), tune_patience=1)
    assert not gate.stop_tuning(4, best_epoch=2)  # the head phase never stops here
    assert gate.stop_tuning(5, best_epoch=3)  # the first fine-tuning epoch did not beat the head
    assert not gate.stop_tuning(5, best_epoch=5)  # it did: go on
    assert gate.stop_tuning(7, best_epoch=6)
    patient = Phases(epochs=10, head_epochs=4, views=("center",), tune_patience=2)
    assert not patient.stop_tuning(5, best_epoch=3) and patient.stop_tuning(6, best_epoch=3)
    assert not Phases(10, 0, ("center",), 1).stop_tuning(5, best_epoch=1)  # no head: nothing to compare with
    assert not Phases(10, 4, ("center",), None).stop_tuning(9, best_epoch=1)  # --tune-patience 0


def test_the_default_recipe_caches_views_and_gates_fine_tuning():
    recipe = phases(TrainConfig(data="", out=""))
    assert recipe.head_epochs == 1 and recipe.epochs > recipe.head_epochs  # one L-BFGS fit of the head
    assert recipe.views == ("center",) and recipe.tune_patience == 1
    assert phases(TrainConfig(data="", out=""), distributed=True).head_epochs == 0


def test_views_are_what_they_say():
    image = torch.arange(3 * 40 * 50, dtype=torch.int64).reshape(3, 40, 50).remainder(251).to(torch.uint8)
    center = view(image, "center", 32)
    assert center.shape == (3, 32, 32)
    assert torch.equal(view(image, "flip", 32), center.flip(-1))
    assert torch.equal(center, image[:, 4:36, 9:41])
    assert view(image, "wide", 32).shape == (3, 32, 32) and view(image, "zoom", 32).shape == (3, 32, 32)
    assert parse_views("center, flip") == ("center", "flip")
    with pytest.raises(ValueError, match="expected a comma list"):
        parse_views("center,mirror")


def test_the_head_cache_holds_the_flipped_view_of_every_photo(colours):
    """Features of the `flip` rows are the backbone's features of the mirrored centre crop, photo by photo."""
    torch.manual_seed(0)
    model = build_model("resnet18", 3).eval()
    body, _ = split_head(model)
    card = ModelCard.for_training("resnet18", list(COLOURS), image_size=32)
    samples = [Sample(str(p), p.parent.name) for p in sorted((colours / "train").rglob("*.png"))]
    base = CatalogDataset(samples, {c: i for i, c in enumerate(COLOURS)}, card)
    normalizer = Normalizer(card)
    loader = DataLoader(ViewsDataset(base, ("center", "flip")), batch_size=5)
    cache = extract_features(body, flat_views(loader), normalizer)
    assert cache.features.shape[0] == 2 * len(samples)
    assert torch.equal(cache.indices, torch.arange(len(samples)).repeat_interleave(2))
    views = ViewsDataset(base, ("center",))
    with torch.no_grad():
        for i in (0, 7, len(samples) - 1):
            center = views[i]["image"][0]
            mirrored = body(normalizer(center.flip(-1)[None]))[0]
            plain = body(normalizer(center[None]))[0]
            assert torch.allclose(cache.features[2 * i + 1], mirrored, atol=1e-5)
            assert torch.allclose(cache.features[2 * i], plain, atol=1e-5)
            assert not torch.allclose(mirrored, plain, atol=1e-3)  # the view is not the centre crop again


def test_fine_tuning_stops_at_once_when_it_does_not_beat_the_head(colours, tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(data=str(colours), out=str(out), head_epochs=6, epochs=12, lr=1e-2, **FAST))
    rows = history(out)
    head = [float(r["macro_f1"]) for r in rows[:6]]
    assert max(head) == 1.0  # the head alone tells the colours apart: fine-tuning cannot beat it
    assert len(rows) == 7  # one fine-tuning epoch, then the gate
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_epoch"] <= 6 and metrics["epochs_run"] == 7
    assert read_card(out / "best.safetensors").metrics["epoch"] == metrics["best_epoch"]


def test_fine_tuning_goes_on_while_it_gains(colours, tmp_path):
    out = tmp_path / "run"
    config = dict(head_epochs=1, head_solver="adam", epochs=5, lr=1e-3, best_metric="val_loss")
    train(TrainConfig(data=str(colours), out=str(out), **FAST | config))
    rows = history(out)
    losses = [float(r["val_loss"]) for r in rows]
    assert len(rows) >= 3, losses  # fine-tuning beat the one-epoch head, and again
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_epoch"] > 1
    assert len(rows) == 5 or losses[-1] >= min(losses[:-1])  # it stopped only when an epoch did not gain


def test_a_bad_views_option_is_refused_before_training(colours, tmp_path):
    with pytest.raises(InputError, match="--cache-views"):
        train(TrainConfig(data=str(colours), out=str(tmp_path / "r"), cache_views="center,sideways", **FAST))
    assert not (tmp_path / "r").exists()


def test_the_lbfgs_head_is_scikit_learns_logistic_regression():
    """The default head solver reaches the baseline's own optimum (the recipe is measured against it)."""
    from sklearn.linear_model import LogisticRegression
    from skutag.trainer.features import CachedFeatures
    from skutag.trainer.head_fit import fit_logistic

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (4, 32))
    labels = rng.integers(0, 4, 200)
    x = (centres[labels] + rng.normal(0, 1.5, (200, 32))).astype(np.float32)
    head = torch.nn.Linear(32, 4)
    fit_logistic(head, CachedFeatures(torch.from_numpy(x), torch.from_numpy(labels), torch.arange(200), {}))
    reference = LogisticRegression(max_iter=5000, tol=1e-8).fit(x, labels)
    with torch.no_grad():
        probs = torch.softmax(head(torch.from_numpy(x)), 1).numpy()
    assert np.abs(probs - reference.predict_proba(x)).max() < 2e-3


def _features(run: Path, colours: Path) -> tuple[np.ndarray, np.ndarray, torch.nn.Module]:
    """The saved model's backbone features of every train/ and val/ photo (eval pixels), their labels, its head."""
    from skutag.trainer.model import read_state_dict

    card = read_card(run / "best.safetensors")
    model = build_model("resnet18", len(card.classes))
    model.load_state_dict(read_state_dict(run / "best.safetensors"))
    body, head = split_head(model.eval())
    samples = [Sample(str(p), p.parent.name) for p in sorted(colours.rglob("*.png"))]
    data = CatalogDataset(samples, {c: i for i, c in enumerate(card.classes)}, card)
    cache = extract_features(body, DataLoader(data, batch_size=8), Normalizer(card))
    return cache.features.numpy(), cache.labels.numpy(), head


def test_refit_fits_the_head_on_train_and_validation_when_fine_tuning_did_not_pay(colours, tmp_path):
    """--refit (the default): the saved head is scikit-learn's regression on all 36 photos; the temperature,
    review thresholds and validation figures are those of the head before the refit (= --no-refit's)."""
    from sklearn.linear_model import LogisticRegression

    options = dict(head_epochs=1, epochs=2, lr=1e-2, **FAST)
    refit, plain = tmp_path / "refit", tmp_path / "plain"
    train(TrainConfig(data=str(colours), out=str(refit), **options))
    train(TrainConfig(data=str(colours), out=str(plain), refit=False, **options))
    got, kept = (
        json.loads((refit / "metrics.json").read_text()),
        json.loads((plain / "metrics.json").read_text()),
    )
    assert got["best_epoch"] == kept["best_epoch"] == 1  # the head's: fine-tuning did not pay
    assert got["refit"] == {
        "train_rows": 24, "val_rows": 12,
        "calibration": "fitted on validation with the head before the refit (cross-fitted)",
    }  # fmt: skip
    assert kept["refit"] is None
    card, plain_card = read_card(refit / "best.safetensors"), read_card(plain / "best.safetensors")
    assert card.provenance["refit"] == got["refit"]
    assert card.temperature == plain_card.temperature and card.review == plain_card.review
    assert got["accuracy"] == kept["accuracy"] and got["review"] == kept["review"]
    x, y, head = _features(refit, colours)
    _, _, plain_head = _features(plain, colours)
    assert not torch.allclose(head.weight, plain_head.weight, atol=1e-3)
    reference = LogisticRegression(max_iter=5000, tol=1e-8).fit(x, y)
    with torch.no_grad():
        probs = torch.softmax(head(torch.from_numpy(x)), 1).numpy()
        plain_probs = torch.softmax(plain_head(torch.from_numpy(x)), 1).numpy()
    assert np.abs(probs - reference.predict_proba(x)).max() < 5e-3
    assert np.abs(plain_probs - reference.predict_proba(x)).max() > 1e-2  # --no-refit saved the 24-photo fit


def test_fine_tuning_must_beat_the_best_by_the_margin():
    gate = Phases(epochs=10, head_epochs=1, views=("center",), tune_patience=1)
    assert gate.margin(1, 55, True) == 0.0  # the head's epoch
    assert gate.margin(2, 55, True) == pytest.approx(1 / 55)  # one validation photo's worth
    assert gate.margin(2, 55, False) == 0.0  # a loss has no photo's worth
    assert Phases(10, 1, ("center",), 1, 0.05).margin(2, 55, False) == 0.05  # --tune-margin
    assert Phases(10, 1, ("center",), None).margin(2, 55, True) == 0.0  # --tune-patience 0: no gate
    assert Phases(10, 0, ("center",), 1).margin(2, 55, True) == 0.0  # no head phase


def test_a_fine_tuning_gain_within_the_margin_keeps_the_head(colours, tmp_path):
    """The run of test_fine_tuning_goes_on_while_it_gains, but its gains are within --tune-margin."""
    out = tmp_path / "run"
    config = dict(
        head_epochs=1, head_solver="adam", epochs=5, lr=1e-3, best_metric="val_loss", tune_margin=10.0
    )
    train(TrainConfig(data=str(colours), out=str(out), **FAST | config))
    rows = history(out)
    assert float(rows[1]["val_loss"]) < float(rows[0]["val_loss"])  # it gained, by less than the margin
    assert len(rows) == 2 and json.loads((out / "metrics.json").read_text())["best_epoch"] == 1
