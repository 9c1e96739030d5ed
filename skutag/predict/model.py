"""A model of any format skutag makes, loaded in its own runtime, and top-k predictions per image file."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skutag.artifacts import format_of, title
from skutag.card import ModelCard
from skutag.errors import InputError

# uint8 [1, H, W, 3] -> (probabilities [1, classes], {attribute head: probabilities [1, values]})
Scores = Callable[[np.ndarray], tuple[np.ndarray, dict[str, np.ndarray]]]


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to score one decoded image: its card, what it is, and the call."""

    path: Path
    kind: str  # what users call it: ONNX, LiteRT, PyTorch run dir, ...
    card: ModelCard
    scores: Scores


@dataclass(frozen=True)
class ImagePrediction:
    """Top-k of one image, best first; or the reason it has none."""

    image: str
    labels: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    error_kind: str | None = None
    error: str | None = None
    # attribute head -> the values given, most probable first, with their probabilities (skutag.heads)
    attributes: dict[str, tuple[tuple[str, float], ...]] | None = None

    def to_dict(self) -> dict[str, object]:
        if self.error is not None:
            return {
                "image": self.image,
                "status": "error",
                "error_kind": self.error_kind,
                "error": self.error,
            }
        found: dict[str, object] = {
            "image": self.image,
            "status": "ok",
            "labels": list(self.labels),
            "scores": list(self.scores),
        }
        if self.attributes is not None:
            found["attributes"] = {
                name: [{"value": v, "score": s} for v, s in given] for name, given in self.attributes.items()
            }
        return found


def open_model(path: str | os.PathLike, device: str = "cpu") -> LoadedModel:
    """`path` loaded in its own runtime; InputError (exit 2) for anything that is not a skutag model."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"model not found: {path}")
    kind = format_of(path)
    if path.is_dir() and kind is None or path.suffix == ".safetensors":
        return _torch_model(path, device)
    if path.suffix.lower() == ".ort":
        raise InputError(
            f"{path} is an ONNX Runtime (.ort) file, which carries no skutag card; "
            "predict with the .onnx file it was written beside"
        )
    if kind in (None, "onnx"):
        return _onnx_model(path, device)
    if device != "cpu":
        raise InputError(f"{path}: {title(kind)} files run on the CPU here; pass --device cpu")
    from skutag.exporter.formats import load_runner

    fmt, card, runner = load_runner(path, "skutag predict")
    if card.attributes is None:
        return LoadedModel(path, fmt.title, card, lambda pixels: (runner(pixels)[0], {}))
    from skutag.exporter.head_parity import split_outputs

    def scores(pixels: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        values = runner.outputs(pixels)
        probs, _, heads = split_outputs(
            values, card.attributes, embeddings=len(values) > 1 + len(card.attributes)
        )
        return probs, heads

    return LoadedModel(path, fmt.title, card, scores)


def _onnx_model(path: Path, device: str) -> LoadedModel:
    """A carded ONNX file in a session, its contract read from that session (`batchrun.predict.from_session`):
    no `onnx` import, so a model seen for the first time answers as fast as one seen before."""
    import hashlib

    from skutag.batchrun.predict.from_session import session_signature
    from skutag.batchrun.predict.infer import host_model_input
    from skutag.batchrun.predict.model import ForeignPreprocessing, contract_of, read_contract
    from skutag.batchrun.predict.signature import read_signature
    from skutag.runtime import create_session

    try:
        session, _ = create_session(path, device, batch_size=1)
    except InputError:
        read_contract(path)  # why, in the contract's own words (not ONNX, a checkpoint, external data, ...)
        raise  # a file the contract accepts but ONNX Runtime cannot run: ORT's words
    data = path.read_bytes()
    signature = session_signature(session, data)
    if signature is None:  # an int8 card older than its target field: the graph says it
        _, signature = read_signature(path)
    contract = contract_of(path, hashlib.sha256(data).hexdigest(), signature, ForeignPreprocessing())
    if not contract.has_card:
        raise InputError(
            f"{path} has no skutag card (labels and preprocessing); "
            "skutag run takes such a model with --labels FILE --image-size N"
        )
    heads = contract.card.attributes or ()
    outputs = [contract.scores_output, *(h.output for h in heads)]

    def scores(pixels: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        values = session.run(outputs, {contract.input_name: host_model_input(pixels, contract)})
        # the attribute heads' outputs come last (after `domain_score` when the card's review reads it)
        return values[0], {h.name: v for h, v in zip(heads, values[len(values) - len(heads) :], strict=True)}

    return LoadedModel(path, "ONNX", contract.card, scores)


def _torch_model(path: Path, device: str) -> LoadedModel:
    import torch

    from skutag.exporter.graph import ExportModule
    from skutag.trainer.weights import load_trained

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise InputError(f"{path}: a run dir runs in PyTorch on cpu or cuda, not {device}")
    model, card = load_trained(path, "cpu")
    module = ExportModule(model, card).to(device).eval()

    heads = card.attributes or ()

    def scores(pixels: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        with torch.inference_mode():
            result = module(torch.from_numpy(pixels).to(device))
        values = [t.float().cpu().numpy() for t in (result if isinstance(result, tuple) else (result,))]
        # the attribute heads' outputs come last (after `domain_score` when the card's review reads it)
        return values[0], {h.name: v for h, v in zip(heads, values[len(values) - len(heads) :], strict=True)}

    return LoadedModel(path, "PyTorch run dir" if path.is_dir() else "PyTorch weights", card, scores)


def predict_files(
    model: LoadedModel, images: Iterable[str | os.PathLike], topk: int
) -> list[ImagePrediction]:
    """Top-k of each image, in the given order; an image that cannot be decoded is a row with its error."""
    from skutag.images import ImageError, model_pixels

    card = model.card
    k = min(topk, card.num_classes)
    results = []
    for image in images:
        name = os.fspath(image)
        try:
            pixels = model_pixels(image, card)
        except ImageError as exc:
            results.append(ImagePrediction(name, error_kind=exc.kind, error=exc.message))
            continue
        scores, heads = model.scores(pixels[None])
        probs = np.asarray(scores, dtype=np.float32)[0]
        order = np.argsort(-probs, kind="stable")[:k]
        labels = tuple(card.classes[i] for i in order)
        attributes = _given(card, heads) if card.attributes else None
        results.append(
            ImagePrediction(
                name, labels, tuple(round(float(probs[i]), 6) for i in order), attributes=attributes
            )
        )
    return results


def _given(card: ModelCard, heads: dict[str, np.ndarray]) -> dict[str, tuple[tuple[str, float], ...]]:
    """Each head's values given for one image, most probable first, as `skutag run` writes them."""
    found = {}
    for head in card.attributes or ():
        p = np.asarray(heads[head.name], np.float32)[:1]
        given = np.flatnonzero(head.given(p)[0])
        ordered = sorted(given, key=lambda i: -p[0, i])
        found[head.name] = tuple((head.values[i], round(float(p[0, i]), 6)) for i in ordered)
    return found
