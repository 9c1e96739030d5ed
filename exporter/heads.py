"""The attribute heads inside the exported graph: each head's probabilities as one more output.

`AttributeOutputs` holds the Linear head of every attribute of a trained
`trainer.multihead.AttributeModel`, and its colour statistics module when the heads read one
(trainer.taps: computed in the graph from the normalised input, after an average pooling), and
turns the pooled features (with the colour statistics appended) into `attr.<name>` probabilities
(docs/design.md, "The ONNX I/O contract"): softmax(logits / T) for a single-valued head,
sigmoid(logits / T) for a multi-valued one, T the head's temperature from the card, in float32
after the pooling, so an int8 file keeps them in its float tail (the colour statistics too: their
first op is the average pooling where the tail's walk stops).
Thresholds are not in the graph: whoever reads the outputs applies the card's.
"""

from __future__ import annotations

import torch
from torch import nn

from skutag.card import ModelCard
from skutag.errors import InputError
from skutag.heads import SINGLE


class AttributeOutputs(nn.Module):
    """Pooled features -> one probability tensor per attribute head, in the card's order."""

    def __init__(self, heads: nn.ModuleDict, card: ModelCard, colour: nn.Module | None = None):
        super().__init__()
        assert card.attributes is not None
        self.heads = nn.ModuleList([heads[h.name] for h in card.attributes])
        self.colour = colour
        self.single = [h.kind == SINGLE for h in card.attributes]
        self.temperatures = [float(h.temperature) for h in card.attributes]

    @classmethod
    def of(cls, model: nn.Module, card: ModelCard) -> AttributeOutputs | None:
        """The outputs of `model`'s attribute heads; None for a model without any. A card and model that
        disagree (heads on one side only, or other names) are refused in one line."""
        heads = getattr(model, "heads", None)
        has_heads = isinstance(heads, nn.ModuleDict) and hasattr(model, "label_head")
        if card.attributes is None and not has_heads:
            return None
        names = [h.name for h in card.attributes or ()]
        if not has_heads or sorted(heads.keys()) != sorted(names):
            raise InputError(
                f"the card's attribute heads ({', '.join(names) or 'none'}) are not the model's "
                f"({', '.join(heads.keys()) if has_heads else 'none'})"
            )
        for head in card.attributes or ():
            if heads[head.name].out_features != len(head.values):
                raise InputError(f"attribute {head.name}: the card lists {len(head.values)} values, the head has "
                                 f"{heads[head.name].out_features} outputs")  # fmt: skip
        colour = getattr(model, "colour", None)
        reads = {h.reads for h in card.attributes or ()}
        if reads != {model.reads}:
            raise InputError(
                f"the card's attribute heads read {' and '.join('+'.join(r) for r in sorted(reads))}, "
                f"the model's {'+'.join(model.reads)}"
            )
        return cls(heads, card, colour)

    def forward(self, features: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        """Every head's probabilities from the pooled features and the normalised input `x`."""
        if self.colour is not None:
            features = torch.cat([features, self.colour(x).to(features.dtype)], dim=1)
        outputs = []
        for head, single, temperature in zip(self.heads, self.single, self.temperatures, strict=True):
            logits = head(features).float() / temperature
            outputs.append(torch.softmax(logits, dim=1) if single else torch.sigmoid(logits))
        return outputs
