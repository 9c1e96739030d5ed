"""`skutag run` on the files users really have: every one gets its row, none stops the run.

A non-UTF-8 filename, a symlink loop, an AppleDouble file, AVIF, HEIC, damaged TIFFs and
an oversize file, through the real CLI; the run exits 0 with one row per input.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from skutag.listing import local_path
from tests.cli import skutag
from tests.inputs import noise_jpeg, write_hostile_inputs


@pytest.fixture(scope="module")
def model(tiny_model) -> Path:
    return tiny_model


def test_awkward_names_layouts_and_formats_each_get_one_row(model, tmp_path):
    root = tmp_path / "catalog"
    expected = write_hostile_inputs(root / "hostile")
    expected = {f"hostile/{name}": kind for name, kind in expected.items()}
    (root / "shoes").mkdir()
    (root / "shoes" / "plain.jpg").write_bytes(noise_jpeg(64, 48))
    expected["shoes/plain.jpg"] = None
    with open(os.path.join(os.fsencode(root / "shoes"), b"caf\xe9.jpg"), "wb") as f:
        f.write(noise_jpeg(64, 48, seed=5))
    expected["shoes/caf%E9.jpg"] = None
    (root / "shoes" / "._plain.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS resource fork
    os.symlink(root, root / "shoes" / "loop")  # back to the top: must not multiply inputs
    (root / "huge.jpg").write_bytes(noise_jpeg(64, 48) + bytes(300_000))
    expected["huge.jpg"] = "too_large"
    out = tmp_path / "out"
    result = skutag(
        "run", model, root, "--out", out, "--max-bytes", 200_000, "--max-error-rate", "1", "--no-progress"
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    rows = ds.dataset(out, format="parquet").to_table().to_pylist()
    by_id = {row["id"]: row for row in rows}
    assert len(rows) == len(by_id) == len(expected) and set(by_id) == set(expected)
    for input_id, kind in expected.items():
        row = by_id[input_id]
        got = None if row["status"] == "ok" else row["error_kind"]
        assert got == kind, (input_id, row["error"])
    odd = by_id["shoes/caf%E9.jpg"]
    assert os.path.basename(local_path(odd["uri"])) == b"caf\xe9.jpg"
    assert "not read" in by_id["huge.jpg"]["error"] and by_id["huge.jpg"]["sha256"] is None
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["skipped"]["hidden"] == 1 and summary["skipped"]["revisited_dirs"] == 1
