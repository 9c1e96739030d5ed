"""An OUT written by skutag 0.3 (tests/fixtures/out-0.3, made by its make_fixture.py at commit 30b2566).

0.3 named the commit log `_manifest.json`; 0.4 writes `_commits.json` and still reads the old
name: a complete 0.3 OUT is complete for 0.4, an incomplete one resumes (and its log is taken
over as `_commits.json`), and a 0.3 OUT serves as `--since` (its rows are copied, not predicted).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skutag.batchrun.api import run_catalog
from skutag.batchrun.commit.reader import CommittedRows
from skutag.batchrun.options import RunOptions

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "out-0.3"
MODEL = FIXTURE / "model.onnx"
OPTIONS = RunOptions(part_rows=4, max_error_rate=1.0, workers=1)


@pytest.fixture
def out03(tmp_path) -> Path:
    out = tmp_path / "out-0.3"
    shutil.copytree(FIXTURE / "out", out)
    return out


def rows(out: Path) -> dict[str, dict]:
    table = CommittedRows(str(out)).dataset().to_table()
    return {row["id"]: row for row in table.to_pylist()}


def test_the_fixture_is_a_03_out():
    names = {p.name for p in (FIXTURE / "out").iterdir()}
    assert "_manifest.json" in names and "_commits.json" not in names and "_SUCCESS" in names


def test_a_complete_03_out_is_complete_for_04(out03):
    before = rows(out03)
    summary = run_catalog(MODEL, [], out03, OPTIONS)
    assert summary.already_complete and summary.complete
    assert (summary.rows, summary.ok, summary.errors_by_kind) == (7, 6, {"not_image": 1})
    assert rows(out03) == before and len(before) == 7


def test_an_incomplete_03_out_resumes_and_its_log_becomes_commits_json(out03):
    before = rows(out03)
    (out03 / "_SUCCESS").unlink()
    summary = run_catalog(MODEL, [], out03, OPTIONS)
    assert not summary.already_complete and summary.complete
    assert (summary.rows, summary.resumed_rows, summary.processed_rows, summary.decoded) == (7, 7, 0, 7)
    assert (out03 / "_commits.json").exists() and not (out03 / "_manifest.json").exists()
    assert rows(out03) == before


def test_a_03_out_serves_as_since(out03, tmp_path):
    new_image = tmp_path / "new.jpg"
    Image.fromarray(np.full((40, 48, 3), 128, np.uint8)).save(new_image)
    manifest = tmp_path / "inputs.csv"
    with open(FIXTURE / "inputs.csv", newline="") as handle:
        entries = list(csv.DictReader(handle))
    entries.append({"id": "sku7", "uri": str(new_image), "version": "v1", "label": "boot"})
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "uri", "version", "label"])
        writer.writeheader()
        writer.writerows(entries)
    night2 = tmp_path / "night2"
    summary = run_catalog(MODEL, [str(manifest)], night2, OPTIONS.replace(since=str(out03)))
    assert summary.since_note is None
    assert (summary.rows, summary.reused, summary.new, summary.decoded) == (8, 7, 1, 1)
    before, after = rows(out03), rows(night2)
    for key in ("label", "score", "topk_labels", "status", "error_kind", "sha256"):
        assert [after[i][key] for i in sorted(before)] == [before[i][key] for i in sorted(before)]
    assert after["sku7"]["status"] == "ok"
    assert (night2 / "_commits.json").exists() and not list(night2.glob("_manifest*"))
