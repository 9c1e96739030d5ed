"""The exported graph: preprocessing and softmax inside, the model card in its metadata.

`ExportModule` wraps a trained torchvision or timm classifier so the ONNX file takes what
batchrun feeds it: by default uint8 `[batch, H, W, 3]` RGB, already resized and
centre-cropped by the host, cast to float first (TensorRT handles uint8 layout changes
poorly), then layout change and normalisation inside the graph; `probs` float32 `[batch, classes]` out,
softmax(logits / T) with the card's `temperature` T (skutag.calibration; 1 when the card has none), so
every format built from this module gives calibrated probabilities; optionally `embedding` (the pooled
penultimate features); `domain_score` [batch] when the card's review section reads it (score
"stage-statistics": the squared Mahalanobis distance of the body's stage statistics to the training rows'
Gaussian, trainer.stage_stats, which the loaded model carries as `domain_fit`). `export_fp32` writes one self-contained file with the pinned
opset and a dynamic batch dimension named `batch`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import onnx
import torch
from skutag.exporter.heads import AttributeOutputs
from skutag.trainer.model import classifier_name
from skutag.trainer.stage_stats import DomainDistance, StageTaps, stage_names
from torch import nn

from skutag.card import DOMAIN_SCORE, METADATA_KEY, ModelCard
from skutag.errors import InputError
from skutag.fsio import atomic_path
from skutag.normalize import normalize, pixel_scale

OPSET = 18
INPUT_NAME = "image"
PROBS = "probs"
EMBEDDING = "embedding"
DOMAIN = "domain_score"


def reads_domain(card: ModelCard) -> bool:
    """Whether the card's review section reads the graph's `domain_score` output."""
    return (card.review or {}).get("score") == DOMAIN_SCORE


class ExportModule(nn.Module):
    """Trained classifier + in-graph preprocessing + softmax (+ the pooled features)."""

    def __init__(
        self, model: nn.Module, card: ModelCard, *, input_kind: str = "uint8", embeddings: bool = False
    ):
        super().__init__()
        body = copy.deepcopy(model).eval()
        # A model with attribute heads (trainer.multihead) is already body + label head; each head's
        # probabilities are one more output, `attr.<name>` (exporter.heads).
        self.attributes = AttributeOutputs.of(body, card)
        if hasattr(body, "label_head"):
            self.head, body = body.label_head, body.body
        else:
            head = classifier_name(body)
            self.head = body.get_submodule(head)
            body.set_submodule(head, nn.Identity())
        self.body = body
        self.input_kind = input_kind
        self.embeddings = embeddings
        # uint8 pixels in [0, 255]: the /255 folded into mean and std (skutag.normalize).
        mean, std = pixel_scale(card.mean, card.std)
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("std", torch.from_numpy(std))
        self.temperature = float(card.temperature or 1.0)  # a constant in the graph: logits / T
        self.taps = self.domain = None
        if reads_domain(card):
            self.taps, self.domain = _domain_parts(model, body, card)

    def forward(self, image: torch.Tensor):
        if self.input_kind == "uint8":
            # Cast before any layout change: the first node on the uint8 input is the Cast.
            # contiguous(): a channels-last tensor would make the exporter turn flatten into as_strided + Gather
            pixels = image.to(self.mean.dtype)
            x = normalize(pixels.permute(0, 3, 1, 2).contiguous(), self.mean, self.std)
        else:
            x = image
        features = self.body(x)
        # the stage statistics the forward hooks recorded during the body (they trace into the graph)
        domain = () if self.taps is None else (self.domain(self.taps.statistics()),)
        logits = self.head(features).float()
        if self.temperature != 1.0:
            logits = logits / self.temperature
        probs = torch.softmax(logits, dim=1)
        outputs = (probs, *((features.float(),) if self.embeddings else ()), *domain)
        if self.attributes is not None:
            return (*outputs, *self.attributes(features, x))
        return outputs if len(outputs) > 1 else probs


def _domain_parts(model: nn.Module, body: nn.Module, card: ModelCard) -> tuple[StageTaps, DomainDistance]:
    """The forward hooks on the body's stages and the Gaussian (the loaded model's `domain_fit`)."""
    fit = getattr(model, "domain_fit", None)
    stages = tuple(card.review["stages"])
    if fit is None or stage_names(body) != stages:
        raise InputError(f"the card's review reads {DOMAIN} over {stages}; the model has no such Gaussian")
    return StageTaps(body, stages).attach(), DomainDistance(fit)


def output_names(card: ModelCard, embeddings: bool) -> list[str]:
    """The graph's outputs in order: `probs`, `embedding` when asked, `domain_score` when the card's review
    reads it, `attr.<name>` per attribute head."""
    return [
        PROBS,
        *([EMBEDDING] if embeddings else []),
        *([DOMAIN] if reads_domain(card) else []),
        *(h.output for h in card.attributes or ()),
    ]


def example_input(card: ModelCard, input_kind: str, batch: int = 2) -> torch.Tensor:
    size = card.image_size
    if input_kind == "uint8":
        return torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    return torch.randn(batch, 3, size, size)


def export_fp32(
    model: nn.Module, card: ModelCard, out: str | Path, *, input_kind: str = "uint8", embeddings: bool = False
) -> onnx.ModelProto:
    """Export to `out` (atomically) and return the saved ModelProto, card embedded."""
    module = ExportModule(model, card, input_kind=input_kind, embeddings=embeddings).eval()
    proto = to_onnx(module, card)
    save(proto, out)
    return proto


def edge_example(size: int) -> tuple[torch.Tensor]:
    """The batch-1 uint8 NHWC example the edge formats are exported with."""
    return (torch.zeros(1, size, size, 3, dtype=torch.uint8),)


def exported_card(
    card: ModelCard, input_kind: str, precision: str = "fp32", int8_target: str | None = None
) -> ModelCard:
    """The run's card as the exported file describes itself: its input, precision and int8 target."""
    return card.replace(
        input_dtype="uint8" if input_kind == "uint8" else "float32",
        input_layout="NHWC" if input_kind == "uint8" else "NCHW",
        precision=precision,
        int8_target=int8_target,
    )


def to_onnx(module: ExportModule, card: ModelCard) -> onnx.ModelProto:
    """The fp32 ModelProto of `module` (dynamo exporter, pinned opset, dynamic `batch`), card embedded."""
    outputs = output_names(card, module.embeddings)
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            (example_input(card, module.input_kind),),
            None,
            dynamo=True,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    set_metadata(proto, exported_card(card, module.input_kind))
    return proto


def set_metadata(proto: onnx.ModelProto, card: ModelCard) -> None:
    """The card under `skutag.card`, plus readable keys for tools that show ONNX metadata."""
    values = {
        METADATA_KEY: card.to_json(),
        "skutag.classes": json.dumps(list(card.classes)),
        "skutag.preprocessing": json.dumps(
            {
                "resize_size": card.resize_size,
                "image_size": card.image_size,
                "interpolation": card.interpolation,
                "mean": list(card.mean),
                "std": list(card.std),
                "input_dtype": card.input_dtype,
                "input_layout": card.input_layout,
            }
        ),
        "skutag.precision": card.precision,
    }
    if card.int8_target is not None:
        values["skutag.int8_target"] = card.int8_target
    kept = [p for p in proto.metadata_props if p.key not in values and p.key != "skutag.int8_target"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "skutag"
    proto.doc_string = f"skutag {card.arch} classifier, {card.num_classes} classes, {card.precision}"


def save(proto: onnx.ModelProto, out: str | Path) -> None:
    """One self-contained file, written atomically, after onnx's full check."""
    onnx.checker.check_model(proto, full_check=True)
    with atomic_path(out) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
