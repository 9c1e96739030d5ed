"""Fixtures the batchrun tests share: six tiny images, and the awkward catalog with its expected rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from skutag.images import is_image_path
from tests.batchrun.support import tiny_catalog
from tests.support.inputs import write_awkward_inputs


@pytest.fixture(scope="module")
def six_images(tmp_path_factory) -> Path:
    """Six small images in two class folders (a run of them takes about a second)."""
    return tiny_catalog(tmp_path_factory.mktemp("six"), 6, seed=3, classes=2, min_size=64, max_size=96)


@pytest.fixture(scope="module")
def awkward(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    """Every bad-input kind of tests/support/inputs.py: (folder, id -> expected error kind)."""
    root = tmp_path_factory.mktemp("awkward")
    return root, write_awkward_inputs(root)


@pytest.fixture(scope="module")
def expected(small_catalog, awkward) -> dict[str, str | None]:
    """id -> expected error kind (None: must be ok) for the mixed catalog."""
    good = {
        p.relative_to(small_catalog).as_posix(): None for p in small_catalog.rglob("*") if is_image_path(p)
    }
    return {**good, **awkward[1]}
