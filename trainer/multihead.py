"""One backbone, the label head and one head per attribute: the model of a run with `--attributes`.

`AttributeModel.wrap` takes the plain classifier `trainer.model.build` makes and splits it
into its body (the classifier replaced by Identity: the pooled features) and its label head,
then adds a Linear head per attribute. The label head reads the pooled features; the attribute
heads read the pooled features with, when the model has its `colour` module (trainer.taps, every
model `skutag train --attributes` makes), the colour statistics of the input pixels appended
(`attribute_input`): globally pooled ImageNet features keep little of a garment's colour (issue 30,
measured in benchmarks/RESULTS.md, "Attribute heads"). `forward(x)` returns the label
logits, so everything that treats a run's model as a classifier (eval, Grad-CAM, bench,
predict) still does; `forward(x, all_heads=True)` returns every head's logits by name
(`label` and each attribute), through `forward` so DDP sees the call.

On disk (`best.safetensors`) the weights are the plain classifier's keys, exactly as a
model without attributes writes them, plus `attributes.<name>.weight` / `.bias`
(`plain_state`); `from_state` loads them back strictly (the colour module has no weights: it is
rebuilt from the card's mean and std when the card's heads read `colour`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from skutag.trainer.taps import ColourStatistics
from torch import nn

from skutag.card import ModelCard
from skutag.errors import InputError
from skutag.heads import COLOUR, POOLED, AttributeHead

LABEL = "label"
PREFIX = "attributes."


class AttributeModel(nn.Module):
    """body (features) -> label head, and `heads[name]` per attribute."""

    classifier_path = "label_head"  # what trainer.model.classifier_name finds
    head_prefixes = ("label_head.", "heads.")  # the parameters that train as the head (trainer.freeze)

    def __init__(
        self,
        body: nn.Module,
        label_head: nn.Linear,
        head_name: str,
        heads: Mapping[str, int],
        colour: ColourStatistics | None = None,
    ):
        super().__init__()
        self.body = body
        self.label_head = label_head
        self.head_name = head_name  # the classifier's qualified name in the plain model (`classifier`, `fc`)
        self.colour = colour
        width = label_head.in_features + (colour.dims if colour is not None else 0)
        self.heads = nn.ModuleDict({name: nn.Linear(width, n) for name, n in heads.items()})

    @classmethod
    def wrap(
        cls,
        model: nn.Module,
        heads: Sequence[AttributeHead] | Mapping[str, int],
        colour: ColourStatistics | None = None,
    ) -> AttributeModel:
        """`model` (a plain classifier; taken apart, not copied) with a new head per attribute; with `colour`,
        the heads read the colour statistics too."""
        from skutag.trainer.model import classifier_name

        sizes = heads if isinstance(heads, Mapping) else {h.name: len(h.values) for h in heads}
        name = classifier_name(model)
        label_head = model.get_submodule(name)
        model.set_submodule(name, nn.Identity())
        return cls(model, label_head, name, sizes, colour)

    @property
    def reads(self) -> tuple[str, ...]:
        """What every attribute head reads, as the card's heads say it (skutag.heads.READS)."""
        return (POOLED, COLOUR) if self.colour is not None else (POOLED,)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def attribute_extra(self, x: torch.Tensor) -> torch.Tensor | None:
        """What the attribute heads read beside the pooled features, from the normalised input (None: nothing)."""
        return None if self.colour is None else self.colour(x)

    def attribute_input(self, features: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        """The attribute heads' input: the pooled features, `extra` (attribute_extra) appended."""
        return features if extra is None else torch.cat([features, extra.to(features.dtype)], dim=1)

    def logits(self, features: torch.Tensor, extra: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every head's logits from pooled features and `attribute_extra` (what a feature cache holds)."""
        out = {LABEL: self.label_head(features)}
        inputs = self.attribute_input(features, extra)
        out.update((name, head(inputs)) for name, head in self.heads.items())
        return out

    def forward(self, x: torch.Tensor, all_heads: bool = False):
        features = self.body(x)
        if all_heads:
            return self.logits(features, self.attribute_extra(x))
        return self.label_head(features)

    def plain_state(self) -> dict[str, torch.Tensor]:
        """The weights as `best.safetensors` holds them (see the module docstring)."""
        state = {k: v for k, v in self.body.state_dict().items()}
        state.update((f"{self.head_name}.{k}", v) for k, v in self.label_head.state_dict().items())
        state.update((PREFIX + k, v) for k, v in self.heads.state_dict().items())
        return state


def from_state(
    model: nn.Module, card: ModelCard, state: Mapping[str, torch.Tensor], where: str
) -> AttributeModel:
    """`model` (a fresh plain classifier of the card's arch) with `state` loaded strictly, and the card's heads."""
    heads = card.attributes or ()
    plain = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    attributes = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    reads = {h.reads for h in heads}
    if len(reads) > 1:
        raise InputError(f"the card in {where}: its attribute heads read different inputs ({sorted(reads)})")
    colour = ColourStatistics.for_card(card.mean, card.std) if COLOUR in next(iter(reads), ()) else None
    try:
        model.load_state_dict(plain, strict=True)
        wrapped = AttributeModel.wrap(model, heads, colour)
        wrapped.heads.load_state_dict(attributes, strict=True)
    except RuntimeError as exc:
        raise InputError(
            f"the card in {where} does not match its weights (attribute heads "
            f"{', '.join(h.name for h in heads)}): {str(exc).splitlines()[0]}"
        ) from exc
    return wrapped


def has_attributes(model: nn.Module) -> bool:
    return isinstance(getattr(model, "module", model), AttributeModel)
