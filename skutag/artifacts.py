"""Which export format a model file is, by its name: the one suffix table every stage reads.

`exporter.formats` builds its table of converters on these names; `skutag run` (which
may not import the exporter) uses it to refuse an edge file in one line instead of
failing to parse it as ONNX.
"""

from __future__ import annotations

from pathlib import Path

# format name -> (file suffix, what users call it)
SUFFIXES: dict[str, tuple[str, str]] = {
    "onnx": (".onnx", "ONNX"),
    "executorch": (".pte", "ExecuTorch"),
    "litert": (".tflite", "LiteRT"),
    "openvino": (".xml", "OpenVINO IR"),
    "coreml": (".mlpackage", "Core ML"),
}


def format_of(path: str | Path) -> str | None:
    """The export format `path` names by its suffix (`.ort` is ONNX Runtime's own ONNX format), else None."""
    suffix = Path(path).suffix.lower()
    if suffix == ".ort":
        return "onnx"
    return next((name for name, (ext, _) in SUFFIXES.items() if ext == suffix), None)


def title(name: str) -> str:
    return SUFFIXES[name][1]
