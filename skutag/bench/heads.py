"""What attribute heads cost: the same ONNX file cut down to the single-label model, timed beside it.

For a model whose card lists attribute heads, `label_only` writes the twin the bench times
next to it: the same graph with the `attr.<name>` outputs (and the nodes only they need)
removed by `onnx.utils.Extractor`, and the card without its heads, so the twin is exactly the
single-label model of the same backbone and weights. Its rows are named `<file> (label only)`
and carry `heads: 0`; the model's own rows carry the number of heads.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from skutag.card import METADATA_KEY, ModelCard


def label_only(model: Path, work: Path) -> Path:
    """The single-label twin of `model` in `work` (same name, `-label-only` added)."""
    from skutag.exporter.graph import save, set_metadata

    proto = onnx.load(str(model))
    card = ModelCard.from_json(next(p.value for p in proto.metadata_props if p.key == METADATA_KEY))
    heads = {h.output for h in card.attributes or ()}
    kept = [o.name for o in proto.graph.output if o.name not in heads]
    extractor = onnx.utils.Extractor(proto)
    twin = extractor.extract_model([i.name for i in proto.graph.input], kept)
    del twin.opset_import[:]
    twin.opset_import.extend(proto.opset_import)
    twin.functions.extend(proto.functions)
    twin.ir_version = proto.ir_version
    set_metadata(twin, card.replace(attributes=None))
    path = work / f"{model.stem}-label-only{model.suffix}"
    save(twin, path)
    return path
