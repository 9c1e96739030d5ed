"""skutag from a bare source checkout (the GPU machine: nothing installed, `PYTHONPATH=$PWD`).

An installed skutag has `skutag.trainer`, `skutag.exporter`, ... because setuptools maps the
folders beside `skutag/` onto them (`[tool.setuptools.package-dir]` in pyproject.toml). A source
checkout has no such mapping, so `benchmarks.gpu_suite` puts this folder first on PYTHONPATH when
`skutag.trainer` does not import: Python then runs this file at start-up in every process it
starts (`python -m skutag`, pytest), and the finder below reads the same mapping from
pyproject.toml. Where skutag is installed (also editable) its own mapping answers first.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]


def _stages() -> dict[str, Path]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in mapping.items() if name != "skutag"}


class SourceTree(importlib.abc.MetaPathFinder):
    """Finds `skutag.trainer` (and the other mapped stages) in their folders of the checkout."""

    def __init__(self) -> None:
        self.stages = _stages()

    def find_spec(self, fullname, path=None, target=None):
        folder = self.stages.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )


if not any(type(finder).__name__ == "SourceTree" for finder in sys.meta_path):
    sys.meta_path.append(SourceTree())
