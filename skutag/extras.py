"""Optional extras: import a heavy dependency when a command needs it, or fail in one line (exit 2).

Every optional dependency (the edge converters, FAISS, grad-cam, s3fs, Ray, the weight wheels)
is imported through `require`, so a missing extra reads the same everywhere: what needs it,
the module that is missing, and the `pip install 'skutag[EXTRA]'` line that brings it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from skutag.errors import InputError


class MissingExtra(InputError):
    """An optional extra is not installed (exit 2): one line naming the extra to install."""


def install_hint(extra: str) -> str:
    return f"pip install 'skutag[{extra}]'"


def require(module: str, extra: str, title: str) -> ModuleType:
    """Import `module` (provided by the optional `extra`) for `title`, or raise MissingExtra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"{title} needs the {extra} extra: {install_hint(extra)} ({module} is not importable: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from exc
