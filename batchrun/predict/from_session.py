"""A model's signature read from the ONNX Runtime session that runs it, without importing `onnx`.

`skutag predict` opens a session anyway, and a session knows what the contract checks: the card
(`get_modelmeta().custom_metadata_map`), the inputs that are not initializers and the outputs
(`get_inputs()`, `get_outputs()`: names, element types, dims). Reading them there, rather than
parsing the file with `onnx` (whose import alone costs one to two seconds), keeps a first look at a
model well under a second. `skutag run` cannot do this: its session must not exist before the
DataLoader workers fork, so it reads the signature with `onnx` once per file content
(`batchrun.predict.signature`).

One thing a session does not say is whether a tensor keeps its data in an external file (ONNX
Runtime loads such data from beside the model, or from the working folder, without a word):
`external_data` reads it from the file's protobuf wire format, skipping every tensor's bytes.
Two cases still need `onnx` (the caller falls back to `read_signature`): an int8 card written
before cards recorded their target (the graph's zero-point types say it), and a file ONNX Runtime
cannot load (the contract's own words say why).
"""

from __future__ import annotations

from typing import Any

from skutag.card import METADATA_KEY, ModelCard

from .signature import Dim, ModelSignature, TensorInfo

# ONNX Runtime's type strings as ONNX TensorProto.DataType numbers (onnx.proto, `DataType`).
_ELEM_TYPES = {
    "tensor(float)": 1,
    "tensor(uint8)": 2,
    "tensor(int8)": 3,
    "tensor(uint16)": 4,
    "tensor(int16)": 5,
    "tensor(int32)": 6,
    "tensor(int64)": 7,
    "tensor(string)": 8,
    "tensor(bool)": 9,
    "tensor(float16)": 10,
    "tensor(double)": 11,
    "tensor(uint32)": 12,
    "tensor(uint64)": 13,
    "tensor(bfloat16)": 16,
}
# Field numbers of onnx.proto's messages on the way to a tensor's data_location.
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER = 1, 5
_NODE_ATTRIBUTE = 5
_ATTRIBUTE_TENSOR = 5
_TENSOR_DATA_LOCATION = 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def session_signature(session: Any, data: bytes) -> ModelSignature | None:
    """The signature of the model `session` was made from (`data`: the file's bytes, for the external-data
    check); None when only the graph can complete the card (an int8 card without its target)."""
    card_json = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY) or None
    if card_json is not None:
        card = ModelCard.from_json(card_json)
        if card.precision == "int8" and card.int8_target is None:
            return None
    return ModelSignature(
        card_json=card_json,
        inputs=tuple(_tensor_info(i) for i in session.get_inputs()),
        outputs=tuple(_tensor_info(o) for o in session.get_outputs()),
        external_data=external_data(data),
    )


def external_data(data: bytes) -> bool:
    """True when an initializer, or a tensor attribute of a node, of the model's main graph keeps its data
    in an external file: what `batchrun.predict.signature.parse_signature` checks, from the wire format."""
    view = memoryview(data)
    for field, graph in _fields(view):
        if field != _MODEL_GRAPH:
            continue
        for graph_field, item in _fields(graph):
            if graph_field == _GRAPH_INITIALIZER and _is_external(item):
                return True
            if graph_field == _GRAPH_NODE:
                for node_field, attribute in _fields(item):
                    if node_field != _NODE_ATTRIBUTE:
                        continue
                    tensors = [t for f, t in _fields(attribute) if f == _ATTRIBUTE_TENSOR]
                    if any(_is_external(t) for t in tensors):
                        return True
    return False


def _is_external(tensor: memoryview) -> bool:
    return any(f == _TENSOR_DATA_LOCATION and value == _EXTERNAL for f, value in _fields(tensor))


def _tensor_info(node_arg: Any) -> TensorInfo:
    shape = node_arg.shape
    dims: tuple[Dim, ...] | None = None if shape is None else tuple(d if d != "" else None for d in shape)
    return TensorInfo(node_arg.name, _ELEM_TYPES.get(node_arg.type, 0), dims)


def _fields(buf: memoryview):
    """(field number, value) of each field of one protobuf message: a varint as an int, a length-delimited
    field as a memoryview of its bytes, a fixed-width one as None. ValueError on bytes that are no message."""
    i, end = 0, len(buf)
    while i < end:
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            if i + size > end:
                raise ValueError("a field runs past the end of its message")
            value, i = buf[i : i + size], i + size
        elif wire in (1, 5):
            value, i = None, i + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"protobuf wire type {wire} is not used by ONNX")
        yield key >> 3, value


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("a varint runs past the end of its message")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
