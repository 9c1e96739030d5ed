"""A small run dir with attribute heads, saved as the trainer saves one: for export, run and predict tests.

A ResNet-18 (64 px) trained for a few Adam steps on the synthetic catalog with its label head and two
attribute heads derived from the class, reading the pooled features and the colour statistics (as every
model `skutag train --attributes` makes): `color` (single-valued; class 3's photos have no colour:
missing, masked out of the loss) and `style` (multi-valued: class 2 is `print|zip`). Temperatures,
thresholds and review thresholds come from trainer.head_calibration, the metrics from
trainer.head_metrics: the building blocks the trainer will call.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from skutag.card import ModelCard
from skutag.heads import MULTI, SINGLE

IMAGE_SIZE = 64
COLOR = {0: "red", 1: "green", 2: "blue", 3: None}
STYLE = {0: ("print",), 1: ("zip",), 2: ("print", "zip"), 3: ()}


def finish_heads_review(heads, logits, encoded):
    """The heads with review thresholds chosen at their (fixed) temperatures."""
    from skutag.trainer.head_calibration import probabilities, review_threshold

    return tuple(
        replace(h, review_threshold=review_threshold(h, probabilities(h.kind, logits[h.name], h.temperature),
                                                     encoded[h.name]))
        for h in heads
    )  # fmt: skip


def make_attribute_run(catalog: Path, run: Path, steps: int = 20) -> tuple[Path, ModelCard]:
    from skutag.exporter.samples import load_directory, model_input, select_files
    from skutag.trainer.attributes import Encoded, HeadData
    from skutag.trainer.head_calibration import finish_heads, probabilities
    from skutag.trainer.head_losses import head_loss
    from skutag.trainer.head_metrics import attribute_metrics
    from skutag.trainer.model import build_model
    from skutag.trainer.multihead import AttributeModel
    from skutag.trainer.weights import save_weights

    classes = sorted(p.name for p in catalog.iterdir() if p.is_dir())
    heads = [HeadData("color", SINGLE, ("blue", "green", "red")), HeadData("style", MULTI, ("print", "zip"))]
    card = ModelCard.for_training("resnet18", classes, image_size=IMAGE_SIZE)
    images = load_directory(catalog, card, count=1000)
    files = select_files(catalog, count=1000)
    labels = np.array([classes.index(p.parent.name) for p in files])
    color = np.array([-1 if COLOR[c] is None else heads[0].values.index(COLOR[c]) for c in labels])
    style = np.array([[float(v in STYLE[c]) for v in heads[1].values] for c in labels], np.float32)
    encoded = {"color": Encoded(color, color >= 0), "style": Encoded(style, style.any(axis=1))}
    x = torch.from_numpy(model_input(images.pixels, card, "float"))
    torch.manual_seed(0)
    from skutag.trainer.taps import ColourStatistics

    colour = ColourStatistics.for_card(card.mean, card.std)
    model = AttributeModel.wrap(
        build_model("resnet18", len(classes), "none"), {"color": 3, "style": 2}, colour
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    y = torch.from_numpy(labels)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(x), (32,), generator=generator)
        out = model(x[batch], all_heads=True)
        loss = torch.nn.functional.cross_entropy(out["label"], y[batch], label_smoothing=0.3)
        for head in heads:
            e = encoded[head.name]
            loss = loss + head_loss(
                head.kind,
                out[head.name],
                torch.from_numpy(e.targets)[batch],
                torch.from_numpy(e.mask)[batch],
                None,
            )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.inference_mode():
        logits = {k: v.numpy() for k, v in model(x, all_heads=True).items()}
    # The synthetic heads separate perfectly: their fitted temperatures would saturate every probability
    # (nothing for a parity check to see); fixed temperatures keep them soft, as on real photos.
    finished = tuple(
        replace(h, temperature=t, reads=model.reads)
        for h, t in zip(finish_heads(heads, logits, encoded), (4.0, 3.0), strict=True)
    )
    finished = finish_heads_review(finished, logits, encoded)
    probs = {h.name: probabilities(h.kind, logits[h.name], h.temperature) for h in finished}
    metrics = {"attributes": attribute_metrics(finished, probs, encoded)}
    card = card.replace(
        attributes=finished, metrics={"accuracy": float((logits["label"].argmax(1) == labels).mean())}
    )
    run.mkdir(parents=True, exist_ok=True)
    save_weights(run / "best.safetensors", model, card)
    card.save(run / "card.json")
    import json

    (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return run, card
