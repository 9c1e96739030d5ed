"""What batchrun needs to know about an ONNX file before any worker or session exists.

The card (from `metadata_props["skutag.card"]`), the input's name and dtype, the output
that holds class scores and the optional `embedding` output, from the file's signature
(`batchrun.predict.signature`: read with `onnx` once per file content, then from a cache keyed by its
sha256; no session, so DataLoader workers can be forked afterwards). A model without a skutag card needs `--labels` and the preprocessing flags;
a model with one refuses them, so nothing downstream guesses preprocessing.

A file that does not meet the contract (docs/design.md, "The ONNX I/O contract") is refused here in one
line (InputError, exit 2): weights in external data files (a model is one self-contained
file), or, for a carded model, an input or outputs other than the card describes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from skutag.artifacts import a_title, format_of
from skutag.card import DOMAIN_SCORE, ModelCard
from skutag.errors import InputError
from skutag.runtime import input_shape

from .attributes import check_outputs
from .signature import ModelSignature, TensorInfo, read_signature

PROBS = "probs"
EMBEDDING = "embedding"
DOMAIN = (
    "domain_score"  # the review queue's OOD score computed in the graph (card review score stage-statistics)
)
_ONNX_DTYPES = {1: "float32", 2: "uint8", 10: "float16"}
# Files people hand to `skutag run` by mistake, in plain words (read_signature names any other non-ONNX file).
_NOT_ONNX = {
    ".ort": (
        "ONNX Runtime's own format (.ort, for ONNX Runtime Mobile)",
        "give skutag run the .onnx it came from",
    ),
    ".safetensors": ("PyTorch weights", "export them first: skutag export RUN --out model.onnx"),
    ".ckpt": ("a training checkpoint", "export the run first: skutag export RUN --out model.onnx"),
}


@dataclass(frozen=True)
class ForeignPreprocessing:
    """The flags that stand in for a card: labels and preprocessing of a model skutag did not export."""

    labels: Path | None = None
    image_size: int | None = None
    resize_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: str | None = None
    softmax: bool = False

    def given(self) -> list[str]:
        names = ("labels", "image_size", "resize_size", "mean", "std", "interpolation")
        return [f"--{n.replace('_', '-')}" for n in names if getattr(self, n) is not None]


@dataclass(frozen=True)
class ModelContract:
    path: Path
    sha256: str
    card: ModelCard
    has_card: bool
    input_name: str
    input_dtype: str  # uint8 (NHWC) | float32 / float16 (NCHW, normalised on the host)
    scores_output: str
    apply_softmax: bool
    embedding_dim: int | None  # None: the model has no `embedding` output
    domain_score: bool = False  # the model has a `domain_score` output

    @property
    def reads_domain(self) -> bool:
        """Whether the review queue's OOD score is the graph's `domain_score` (not the embedding's cosine)."""
        return self.domain_score and (self.card.review or {}).get("score") == DOMAIN_SCORE


def read_contract(path: str | os.PathLike, foreign: ForeignPreprocessing | None = None) -> ModelContract:
    """Card, signature and sha256 of the model at `path`; InputError when it cannot be used."""
    path = Path(path)
    kind = format_of(path)
    if kind not in (None, "onnx"):
        raise InputError(
            f"skutag run takes ONNX models; {path} is {a_title(kind)} file (skutag bench runs it; "
            "export with --format onnx for batch runs)"
        )
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    if path.suffix.lower() in _NOT_ONNX:
        what, hint = _NOT_ONNX[path.suffix.lower()]
        raise InputError(f"{path} is {what}, not an ONNX model; {hint}")
    sha256, signature = read_signature(path)
    return contract_of(path, sha256, signature, foreign or ForeignPreprocessing())


def contract_of(
    path: Path, sha256: str, signature: ModelSignature, foreign: ForeignPreprocessing
) -> ModelContract:
    """The contract of a model with this signature, or InputError (docs/design.md, "The ONNX I/O contract")."""
    if signature.external_data:
        raise InputError(
            f"{path} keeps its weights in external data files; a model must be one self-contained file "
            "(re-export it, or save it with onnx.save_model(..., save_as_external_data=False))"
        )
    inputs = signature.inputs
    if not inputs and not signature.outputs:  # protobuf parses many short byte strings as an empty model
        raise InputError(
            f"{path}: not an ONNX model (no graph: truncated, corrupted, or another kind of file)"
        )
    if len(inputs) != 1:
        raise InputError(f"{path}: expected one image input, found {[i.name for i in inputs]}")
    model_input = inputs[0]
    input_dtype = _ONNX_DTYPES.get(model_input.elem_type)
    if input_dtype is None:
        raise InputError(f"{path}: input {model_input.name!r} must be uint8, float32 or float16")
    outputs = {o.name: o for o in signature.outputs}
    if signature.card_json is not None:
        if foreign.given():
            raise InputError(
                f"{path} carries a skutag card; {', '.join(foreign.given())} are only for models without one"
            )
        card = ModelCard.from_json(signature.card_json)
        _check_signature(path, card, model_input, input_dtype, outputs)
        has_card = True
    else:
        card, has_card = _card_from_flags(path, foreign, input_dtype), False
    scores = PROBS if PROBS in outputs else signature.outputs[0].name
    columns = _last_dim(outputs[scores])
    if columns is not None and columns != card.num_classes:
        raise InputError(
            f"{path}: output {scores!r} has {columns} columns but there are {card.num_classes} labels"
        )
    if EMBEDDING in outputs and _last_dim(outputs[EMBEDDING]) is None:
        raise InputError(f"{path}: output {EMBEDDING!r} has no fixed width (the Parquet column needs one)")
    return ModelContract(
        path=path,
        sha256=sha256,
        card=card,
        has_card=has_card,
        input_name=model_input.name,
        input_dtype=input_dtype,
        scores_output=scores,
        apply_softmax=foreign.softmax,
        embedding_dim=_last_dim(outputs[EMBEDDING]) if EMBEDDING in outputs else None,
        domain_score=DOMAIN in outputs,
    )


def _check_signature(
    path: Path, card: ModelCard, model_input: TensorInfo, input_dtype: str, outputs: dict[str, TensorInfo]
) -> None:
    """A carded model's graph must be what its card says: input dtype and shape, float outputs."""
    wanted = "uint8" if card.input_dtype == "uint8" else ("float32", "float16")
    if input_dtype not in wanted:
        raise InputError(
            f"{path}: input {model_input.name!r} is {input_dtype} but its card says {card.input_dtype}"
        )
    dims = model_input.dims or ()
    shape = tuple(d if isinstance(d, int) else None for d in dims)
    expected = input_shape(card, 0)[1:]
    if len(shape) != 4 or shape[1:] != expected or isinstance(dims[0], int):
        described = ["batch", *expected]
        got = ["?" if d is None else d for d in dims]
        raise InputError(
            f"{path}: input {model_input.name!r} has shape {got} but its card describes {described} "
            "(a dynamic batch and the card's image size and layout)"
        )
    if PROBS not in outputs:
        raise InputError(f"{path} carries a skutag card but has no {PROBS!r} output")
    if (card.review or {}).get("score") == DOMAIN_SCORE and DOMAIN not in outputs:
        raise InputError(
            f"{path}: its card's review reads the {DOMAIN!r} output, which the graph does not have"
        )
    for name in (PROBS, EMBEDDING, DOMAIN):
        if name in outputs and _ONNX_DTYPES.get(outputs[name].elem_type) != "float32":
            raise InputError(f"{path}: output {name!r} must be float32")
    check_outputs(path, card, outputs)  # an `attr.<name>` per attribute head of the card


def _last_dim(info: TensorInfo) -> int | None:
    last = info.dims[-1] if info.dims else None
    return last if isinstance(last, int) else None


def _card_from_flags(path: Path, foreign: ForeignPreprocessing, input_dtype: str) -> ModelCard:
    if foreign.labels is None or foreign.image_size is None:
        raise InputError(
            f"{path} has no skutag card: pass --labels FILE (one class per line, in output order) and "
            "--image-size N (and --resize-size, --mean, --std, --interpolation if not the ImageNet defaults)"
        )
    try:
        labels = [line.strip() for line in foreign.labels.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read --labels {foreign.labels}: {exc}") from exc
    card = ModelCard.for_training(
        "unknown",
        [label for label in labels if label],
        image_size=foreign.image_size,
        resize_size=foreign.resize_size,
        interpolation=foreign.interpolation or "bilinear",
        input_dtype="uint8" if input_dtype == "uint8" else "float32",
        input_layout="NHWC" if input_dtype == "uint8" else "NCHW",
        provenance={"source": "batchrun flags", "model": str(path)},
    )
    changes = {k: v for k, v in (("mean", foreign.mean), ("std", foreign.std)) if v is not None}
    return card.replace(**changes) if changes else card
