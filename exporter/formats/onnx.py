"""The ONNX row of the format table: its export is `exporter.pipeline`; here only its runner for bench."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skutag.exporter.graph import EMBEDDING, INPUT_NAME, PROBS


class _Runner:
    batch_size = None

    def __init__(self, session) -> None:
        self._session = session
        self._names = [PROBS] + [o.name for o in session.get_outputs() if o.name == EMBEDDING]

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        values = self._session.run(self._names, {INPUT_NAME: pixels})
        return values[0], (values[1] if len(values) > 1 else None)


def load(path: Path) -> _Runner:
    from skutag.runtime import create_session

    session, _ = create_session(path, "cpu")
    return _Runner(session)


def versions() -> dict[str, str]:
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__}
