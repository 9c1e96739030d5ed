"""Where the real photos are: `../shared/data` beside the clone (CI), or $SKUTAG_REAL_PHOTOS."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REAL_PHOTOS = Path(
    os.environ.get("SKUTAG_REAL_PHOTOS") or Path(__file__).resolve().parents[3] / "shared" / "data"
)
needs_photos = pytest.mark.skipif(not REAL_PHOTOS.is_dir(), reason="../shared/data (real photos) is absent")
