"""Catalog insight over batch runs: a nearest-neighbour index, similar products, near duplicates, Grad-CAM.

Needs the optional extra `insight` (faiss-cpu, grad-cam); `require` names it in one line
when it is missing. batchrun never imports this package.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from skutag.errors import InputError

INSTALL_HINT = "pip install 'skutag[insight]'"


def require(module: str) -> ModuleType:
    """Import an optional dependency of the insight extra, or fail in one line saying how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise InputError(
            f"this command needs the optional extra insight ({module} is missing): {INSTALL_HINT}"
        ) from exc
