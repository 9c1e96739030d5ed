"""Grad-CAM heatmaps of a trained model (`skutag explain`, and the sheet in training and eval reports) (run dir or .safetensors): where it looked for a class.

`explain_images` writes, per image, `<stem>-gradcam.png` (the heatmap over the model's own
input pixels, decoded by `load_image` with the card's preprocessing) and `<stem>-gradcam.npy`
(the heatmap itself, image_size x image_size in [0, 1]), plus `explanations.csv`.
`explain_mistakes` does it for the worst mistakes of a report directory (its
misclassified.csv, most confident first, as the report's contact sheet) and draws
`misclassified-gradcam.png`: each mistake with the heatmap of the predicted class.
`report_gradcam` is that sheet as part of a report: the trainer's and `skutag eval`'s draw it
by default when the extra is installed and the weights are PyTorch's (an ONNX file has no
gradients), and say in one line why not otherwise; `--gradcam` makes it required.
For an attribute head (`skutag train --gradcam-head NAME`) the same is done for that head's outputs: its
mistakes are listed in `<NAME>-misclassified.csv` (trainer.attribute_epochs), the heatmap is of the value in
its `target` column (the predicted value; for a multi-valued head the most probable value given wrongly, else
the most probable one missed), the sheet is `<NAME>-misclassified-gradcam.png`.
The layer is chosen per family (`target_layer`): torchvision ResNets' `layer4[-1]`; timm models'
last module before their pooling (EfficientNet's `bn2`: the head conv, normalised and
activated; ResNet's `layer4`; ConvNeXt's `stages`); else the last conv.
"""

from __future__ import annotations

import csv
import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from skutag.errors import InputError
from skutag.extras import install_hint, require


@dataclass(frozen=True)
class Explanation:
    image: str
    target: str  # the class the heatmap is for
    predicted: str
    score: float  # probability of `predicted`
    heatmap: str  # the PNG written


def target_layer(model):
    """The layer Grad-CAM reads: the last feature map before the pooling, per family (see the module doc)."""
    from torch import nn

    if isinstance(
        getattr(model, "head_prefixes", None), tuple
    ):  # trainer.multihead: the backbone is its body
        model = model.body
    if hasattr(model, "pretrained_cfg"):  # timm: the last module with weights before the pooling / head
        before = []
        for name, child in model.named_children():
            if name in ("global_pool", "head", model.pretrained_cfg.get("classifier")):
                break
            if any(True for _ in child.parameters()):
                before.append(child)
        if before:
            return before[-1]
    if hasattr(model, "layer4"):
        return model.layer4[-1]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise InputError("Grad-CAM needs a convolutional model")
    return convs[-1]


class Explainer:
    """A trained model and its Grad-CAM, on the CPU (heatmaps are a few images, not a catalog)."""

    def __init__(self, run: str | Path, head: str | None = None) -> None:
        cam = require("pytorch_grad_cam", "insight", "Grad-CAM")
        from .augment import Normalizer
        from .weights import load_trained

        self.model, self.card = load_trained(run, "cpu")
        self.normalizer = Normalizer(self.card)
        self.head = None if head is None else _attribute_head(self.card, head)
        self.values = self.card.classes if self.head is None else self.head.values
        net = self.model if self.head is None else _head_output(self.model, self.head.name)
        self.net = net
        self.cam = cam.GradCAM(model=net, target_layers=[target_layer(self.model)])

    def pixels(self, image: str | Path) -> np.ndarray:
        from skutag.images import ImageError, model_pixels

        try:
            return model_pixels(image, self.card)
        except ImageError as exc:
            raise InputError(f"{image}: {exc}") from exc

    def heatmap(self, pixels: np.ndarray, target: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(heatmap [H, W] in [0, 1] for class `target` (None: the predicted one), probabilities [K]); with a
        head, of its value `target` and its probabilities (its temperature applied)."""
        import torch
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        pixels = np.array(pixels)  # a writable copy: decoded pixels may be read-only for torch
        x = self.normalizer(torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous())
        with torch.no_grad():
            logits = self.net(x)
        if self.head is None:
            probs = torch.softmax(logits, dim=1)[0].numpy()
        else:
            scaled = logits / self.head.temperature
            probs = (torch.softmax(scaled, dim=1) if self.head.kind == "single" else torch.sigmoid(scaled))[
                0
            ].numpy()
        target = int(probs.argmax()) if target is None else target
        return self.cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0], probs

    def class_index(self, name: str | None) -> int | None:
        if name is None:
            return None
        if name not in self.values:
            what = "a class of this model" if self.head is None else f"a value of head {self.head.name!r}"
            raise InputError(f"--class {name!r} is not {what} ({', '.join(self.values)})")
        return self.values.index(name)


def _attribute_head(card, name: str):
    heads = {h.name: h for h in card.attributes or ()}
    if name not in heads:
        raise InputError(
            f"--gradcam-head {name!r}: the model has no such attribute head ({', '.join(heads) or 'none'})"
        )
    return heads[name]


def _head_output(model, name: str):
    """`model` (trainer.multihead's AttributeModel) as a network whose output is head `name`'s logits."""
    from torch import nn

    class HeadOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x, all_heads=True)[name]

    return HeadOutput().eval()


def overlay(pixels: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(pixels.astype(np.float32) / 255.0, heatmap, use_rgb=True)


def explain_images(
    run: str | Path, images: list[str], out: str | Path, *, target: str | None = None
) -> list[Explanation]:
    """Heatmaps of `images` for class `target` (default: each image's predicted class) into `out`."""
    from PIL import Image

    from skutag.fsio import atomic_path

    explainer = Explainer(run)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = explainer.class_index(target)
    classes = explainer.card.classes
    results, stems = [], set()
    for image in images:
        pixels = explainer.pixels(image)
        heatmap, probs = explainer.heatmap(pixels, wanted)
        stem = _unique(Path(image).stem, stems)
        png = out / f"{stem}-gradcam.png"
        with atomic_path(png) as tmp:
            Image.fromarray(overlay(pixels, heatmap)).save(tmp, format="PNG")
        with atomic_path(out / f"{stem}-gradcam.npy") as tmp, open(tmp, "wb") as handle:
            np.save(handle, heatmap.astype(np.float32))
        predicted = int(probs.argmax())
        results.append(
            Explanation(
                str(image),
                classes[predicted if wanted is None else wanted],
                classes[predicted],
                float(probs[predicted]),
                str(png),
            )
        )
    _write_csv(out / "explanations.csv", results)
    return results


def explain_mistakes(
    run: str | Path, report: str | Path, out: str | Path, limit: int = 24, head: str | None = None
) -> Path:
    """Heatmaps of the predicted class over the `limit` worst mistakes of `report`; returns the sheet. With
    `head`: of attribute head `head`'s mistakes (`<head>-misclassified.csv`, the value in its `target` column)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skutag.fsio import atomic_path
    from skutag.listing import local_path

    from .report import contact_grid

    prefix = "" if head is None else f"{head}-"
    listed = Path(report) / f"{prefix}misclassified.csv"
    if not listed.is_file():
        raise InputError(f"{report} has no misclassified.csv (is it a skutag report directory?)")
    with open(listed, newline="") as handle:
        rows = list(csv.DictReader(handle))[:limit]
    explainer = Explainer(run, head)
    fig, axes = contact_grid(len(rows))
    for ax, row in zip(axes.flat, rows, strict=False):
        try:
            pixels = explainer.pixels(local_path(row["path"]))
        except InputError:
            ax.text(0.5, 0.5, "unreadable", ha="center")
            continue
        target = row.get("target") or row["predicted_label"]
        heatmap, _ = explainer.heatmap(pixels, explainer.class_index(target))
        ax.imshow(overlay(pixels, heatmap))
        title = f"true {row['true_label']}\npred {row['predicted_label']}"
        ax.set_title(title + (f"\nmap of {target}" if head else ""), fontsize=7, color="darkred")
    what = "the class it predicted" if head is None else f"the {head} value it gave wrongly (else missed)"
    fig.suptitle(f"Most confident mistakes: where the model looked for {what}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sheet = out / f"{prefix}misclassified-gradcam.png"
    with atomic_path(sheet) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return sheet


def report_gradcam(
    weights: str | Path, report: str | Path, wanted: bool | None, head: str | None = None
) -> str:
    """Draw REPORT/misclassified-gradcam.png from `weights` (a run dir or .safetensors); one line saying
    what was done. `wanted`: True requires it (errors are raised), None draws it when possible, False skips.
    With `head`: REPORT/<head>-misclassified-gradcam.png from REPORT/<head>-misclassified.csv."""
    if wanted is False:
        return "Grad-CAM: off (--no-gradcam)"
    reason = check_gradcam(weights, wanted)
    if reason is not None:
        return f"{reason}; skipped"
    listed = Path(report) / ("misclassified.csv" if head is None else f"{head}-misclassified.csv")
    whose = "" if head is None else f" of attribute head {head}"
    if not _has_mistakes(listed):
        return f"Grad-CAM: no mistakes{whose} to explain"
    return f"Grad-CAM of the worst mistakes{whose} -> {explain_mistakes(weights, report, report, head=head)}"


def check_gradcam(weights: str | Path, wanted: bool | None) -> str | None:
    """Why Grad-CAM cannot be drawn for `weights` (None when it can); raised when `wanted` is True,
    so `--gradcam` fails before hours of training or evaluation rather than after."""
    reason = None
    if Path(weights).suffix == ".onnx":
        reason = f"Grad-CAM needs the PyTorch weights (the run dir or its .safetensors), not {weights}"
    elif importlib.util.find_spec("pytorch_grad_cam") is None:
        reason = f"Grad-CAM needs the optional extra insight: {install_hint('insight')}"
    if reason is not None and wanted:
        raise InputError(reason)
    return reason


def _has_mistakes(listed: Path) -> bool:
    with open(listed, newline="") as handle:
        return next(csv.DictReader(handle), None) is not None


def _unique(stem: str, seen: set[str]) -> str:
    name, n = stem, 1
    while name in seen:
        n += 1
        name = f"{stem}-{n}"
    seen.add(name)
    return name


def _write_csv(path: Path, rows: list[Explanation]) -> None:
    from skutag.fsio import atomic_write_text

    fields = list(Explanation.__dataclass_fields__)
    lines = [",".join(fields)] + [",".join(_cell(v) for v in asdict(r).values()) for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _cell(value: object) -> str:
    text = f"{value:.6f}" if isinstance(value, float) else str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text
