"""The one normalisation: 0-255 pixels -> (pixels - 255*mean) / (255*std), with the card's mean and std.

Every stage normalises through here (the trainer's batches, the exported graph, the
exporter's float input, batchrun's float feeds), so a model sees the same figures
everywhere. Works on NumPy arrays and torch tensors alike (NCHW, channels on axis 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def pixel_scale(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The card's mean and std in pixel units (x 255), float32 `[1, 3, 1, 1]`."""
    shape = (1, 3, 1, 1)
    return (
        np.asarray(mean, np.float32).reshape(shape) * np.float32(255.0),
        np.asarray(std, np.float32).reshape(shape) * np.float32(255.0),
    )


def normalize(pixels: Any, mean: Any, std: Any) -> Any:
    """`pixels` (float, 0-255, NCHW) normalised with `pixel_scale`'s mean and std (same library and device)."""
    return (pixels - mean) / std


def normalize_nhwc_uint8(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 `[N, H, W, 3]` pixels -> float32 `[N, 3, H, W]` normalised (the classic float model input)."""
    m, s = pixel_scale(mean, std)
    x = pixels.transpose(0, 3, 1, 2).astype(np.float32)
    return np.ascontiguousarray(normalize(x, m, s))
