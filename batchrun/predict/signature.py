"""An ONNX file's signature: the part of a model `batchrun.predict.model` checks, read once per file content.

What the contract needs from a file is small: the card text, the graph inputs that are not
initializers, the outputs (name, element type, dims) and whether any tensor keeps its data in an
external file. Parsing the file for it needs the `onnx` package, whose import alone (`onnx.helper`
loads `ml_dtypes`) costs about a second: more than a `--since` night that reuses every row spends
on anything else. So a signature, once read, is kept as a small JSON file named by the model's
sha256 (the run key's `model_sha256`, which every run computes anyway): the same bytes give the
same signature, other bytes another name, so a cached signature is never stale for the file it
is used for. A file that is refused (not ONNX, a broken card) is never cached and is refused again.

The cache lives in `$SKUTAG_CACHE_DIR/onnx-signatures/` (default `$XDG_CACHE_HOME/skutag`, else
`~/.cache/skutag`). A cache that cannot be read or written costs the parse, nothing else: the
signature is then read from the file, exactly as without a cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from skutag.errors import InputError
from skutag.fsio import atomic_write_text, sha256_file

log = logging.getLogger(__name__)

# Bump when what a signature holds, or how it is read from a file, changes.
SIGNATURE_VERSION = 1

Dim = int | str | None  # a fixed size, a symbolic name (`batch`), or unknown


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, ONNX element type (TensorProto.DataType) and dims (None: no shape)."""

    name: str
    elem_type: int
    dims: tuple[Dim, ...] | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorInfo:
        dims = data["dims"]
        return cls(str(data["name"]), int(data["elem_type"]), None if dims is None else tuple(dims))


@dataclass(frozen=True)
class ModelSignature:
    """What `batchrun.predict.model.read_contract` checks: card JSON (None: no skutag card; an int8 card
    written before cards recorded their target has it filled in from the graph), the inputs that are
    not initializers, the outputs in graph order, and whether any tensor lives in external data."""

    card_json: str | None
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    external_data: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSignature:
        return cls(
            card_json=data["card_json"],
            inputs=tuple(TensorInfo.from_dict(i) for i in data["inputs"]),
            outputs=tuple(TensorInfo.from_dict(o) for o in data["outputs"]),
            external_data=bool(data["external_data"]),
        )


def read_signature(path: Path) -> tuple[str, ModelSignature]:
    """(sha256, signature) of the ONNX file at `path`: from the cache when its content was read
    before, else parsed with `onnx` (and cached). InputError when the file cannot be parsed."""
    cached = _load(sha256_file(path))
    if cached is not None:
        return cached
    data = path.read_bytes()  # hash and parse the same bytes, so the key is the content parsed
    sha256 = hashlib.sha256(data).hexdigest()
    signature = parse_signature(path, data)
    _store(sha256, signature)
    return sha256, signature


def parse_signature(path: Path, data: bytes) -> ModelSignature:
    """The signature of the ONNX model in `data` (read from `path`, named in errors), with `onnx`."""
    import onnx

    from skutag.runtime import file_card

    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InputError(
            f"cannot load ONNX model {path}: not an ONNX model (truncated, corrupted, or another kind of file)"
        ) from exc
    graph = proto.graph
    tensors = [*graph.initializer, *(a.t for n in graph.node for a in n.attribute if a.HasField("t"))]
    initializers = {i.name for i in graph.initializer}
    card = file_card(proto)
    return ModelSignature(
        card_json=None if card is None else card.to_json(),
        inputs=tuple(_tensor_info(i) for i in graph.input if i.name not in initializers),
        outputs=tuple(_tensor_info(o) for o in graph.output),
        external_data=any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors),
    )


def cache_dir() -> Path:
    """Where signatures are kept (see the module docstring)."""
    root = os.environ.get("SKUTAG_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "skutag")
    return Path(root) / "onnx-signatures"


def _tensor_info(value_info) -> TensorInfo:
    tensor_type = value_info.type.tensor_type
    dims = None
    if tensor_type.HasField("shape"):
        dims = tuple(d.dim_value or d.dim_param or None for d in tensor_type.shape.dim)
    return TensorInfo(value_info.name, tensor_type.elem_type, dims)


def _cache_file(sha256: str) -> Path:
    return cache_dir() / f"{sha256}.v{SIGNATURE_VERSION}.json"


def _load(sha256: str) -> tuple[str, ModelSignature] | None:
    path = _cache_file(sha256)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("sha256") != sha256:
            raise ValueError(f"names another file's sha256 ({data.get('sha256')})")
        return sha256, ModelSignature.from_dict(data["signature"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a damaged entry: read the file again
        log.warning("model signature cache %s unusable (%s); reading the model", path, exc)
        return None


def _store(sha256: str, signature: ModelSignature) -> None:
    path = _cache_file(sha256)
    body = {"sha256": sha256, "version": SIGNATURE_VERSION, "signature": signature.to_dict()}
    try:
        atomic_write_text(path, json.dumps(body, sort_keys=True) + "\n")
    except OSError as exc:
        log.warning(
            "cannot cache the model signature in %s (%s); the next run reads the model again", path, exc
        )
