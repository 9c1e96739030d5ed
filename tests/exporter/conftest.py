"""Shared fixtures of the exporter's tests: the small trained run every export starts from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from skutag.exporter.samples import load_directory, model_input, select_files

from skutag.card import ModelCard

IMAGE_SIZE = 64


@pytest.fixture(scope="session")
def trained_run(small_catalog, tmp_path_factory) -> tuple[Path, ModelCard]:
    """A ResNet-18 trained for 20 Adam steps on the synthetic catalog: right on every class, and (label
    smoothing) with probabilities that are not saturated, so parity figures mean something. One for the
    session: every module (ONNX, int8, edge formats) exports it and none writes into its run dir."""
    from skutag.trainer.model import build_model
    from skutag.trainer.weights import save_weights

    classes = sorted(p.name for p in small_catalog.iterdir() if p.is_dir())
    card = ModelCard.for_training("resnet18", classes, image_size=IMAGE_SIZE)
    images = load_directory(small_catalog, card, count=1000)
    files = select_files(small_catalog, count=1000)
    labels = torch.tensor([classes.index(p.parent.name) for p in files])
    x = torch.from_numpy(model_input(images.pixels, card, "float"))
    torch.manual_seed(0)
    model = build_model("resnet18", len(classes), "none")
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(20):
        batch = torch.randint(0, len(x), (32,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), labels[batch], label_smoothing=0.3)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.inference_mode():
        predicted = model.eval()(x).argmax(dim=1)
    assert len(set(predicted.tolist())) == len(classes), "the fixture model must not be degenerate"
    run = tmp_path_factory.mktemp("run")
    save_weights(run / "best.safetensors", model.eval(), card)
    card.save(run / "card.json")
    return run, card
