"""Hostile bytes never escape as anything but an ImageError, and never stop a stage (issue 9).

A seeded fuzz of mutated JPEG, progressive JPEG, PNG, TIFF, WebP, GIF and AVIF files
(tests/support/inputs.py: bit flips, truncations, chunk duplications, header and TIFF tag
corruptions): every case through `load_image` returns pixels or raises ImageError, and one
`skutag run` over a hundred of them gives every case exactly one row. `-m slow` runs 20,000
cases through `load_image` and 5,000 through `skutag run`. Export calibration and the
training report's contact sheet survive the same files.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from skutag.card import ModelCard
from skutag.formats import avif_available
from skutag.images import ERROR_KINDS, ImageError, load_image
from tests.support.cli import skutag
from tests.support.inputs import fuzz_cases, fuzz_seeds, hostile_inputs, write_hostile_inputs

pytestmark = pytest.mark.skipif(not avif_available(), reason="this Pillow has no AVIF support")


def fuzz_load_image(count: int, seed: int) -> dict[str, int]:
    """Every case: pixels of the right shape, or an ImageError of a known kind. Returns the outcome counts."""
    outcomes: dict[str, int] = {}
    for name, data in fuzz_cases(count, seed):
        try:
            pixels = load_image(data, resize_size=64, image_size=56).pixels
            assert pixels.shape == (56, 56, 3) and pixels.dtype == np.uint8, name
            kind = "ok"
        except ImageError as exc:
            assert exc.kind in ERROR_KINDS and exc.message, name
            exc.message.encode("utf-8")
            kind = exc.kind
        outcomes[kind] = outcomes.get(kind, 0) + 1
    return outcomes


def test_fuzz_seeds_are_valid_files_of_every_format():
    formats = {load_image(data).format for data in fuzz_seeds().values()}
    assert formats == {"JPEG", "PNG", "TIFF", "WEBP", "GIF", "AVIF"}


def test_fuzzed_bytes_give_pixels_or_an_image_error():
    outcomes = fuzz_load_image(600, seed=0)
    assert sum(outcomes.values()) == 600
    # The mutations do damage: most kinds of failure show up, and many cases still decode.
    assert {"ok", "truncated", "corrupt", "not_image"} <= set(outcomes), outcomes


@pytest.mark.slow
def test_fuzzed_bytes_give_pixels_or_an_image_error_20000_cases():
    outcomes = fuzz_load_image(20_000, seed=1)
    assert sum(outcomes.values()) == 20_000


# -- one `skutag run` over fuzzed files -----------------------------------------------------------

CLASSES = ["boot", "cup", "lamp"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A resnet18 at 32 px with random weights, exported as the batchrun tests export theirs."""
    import torch
    from skutag.exporter.graph import export_fp32
    from skutag.trainer.model import build_model

    torch.manual_seed(0)
    card = ModelCard.for_training("resnet18", CLASSES, image_size=32)
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    export_fp32(build_model("resnet18", len(CLASSES)).eval(), card, path)
    return path


def write_cases(directory: Path, count: int, seed: int) -> set[str]:
    directory.mkdir(parents=True)
    for name, data in fuzz_cases(count, seed):
        (directory / name).write_bytes(data)
    names = set(os.listdir(directory))
    return names | set(write_hostile_inputs(directory))


def read_rows(out: Path) -> list[dict]:
    parts = sorted(glob.glob(str(out / "*.parquet")))
    assert parts, sorted(os.listdir(out))
    return [row for part in parts for row in pq.read_table(part).to_pylist()]


def run_fuzz(model: Path, tmp_path: Path, count: int, seed: int, timeout: float) -> None:
    cases = write_cases(tmp_path / "fuzz", count, seed)
    out = tmp_path / "out"
    result = skutag(
        "run", model, tmp_path / "fuzz", "--out", out, "--max-error-rate", "1", "--batch-size", "16",
        timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr[-3000:]
    rows = read_rows(out)
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)) == len(cases) and set(ids) == cases
    for row in rows:
        if row["status"] == "ok":
            assert row["error_kind"] is None and row["label"] in CLASSES, row["id"]
        else:
            assert row["status"] == "error" and row["error_kind"] in ERROR_KINDS and row["error"], row["id"]
    by_id = {row["id"]: row for row in rows}
    for name, (_, kind) in hostile_inputs().items():
        assert by_id[name]["error_kind"] == kind, (name, by_id[name]["error"])


def test_skutag_run_gives_every_fuzzed_file_one_row(model, tmp_path):
    run_fuzz(model, tmp_path, 100, seed=2, timeout=300)


@pytest.mark.slow
def test_skutag_run_gives_every_fuzzed_file_one_row_5000_cases(model, tmp_path):
    run_fuzz(model, tmp_path, 5_000, seed=3, timeout=1200)


# -- export calibration and the report's contact sheet survive the same files --------------------


def test_calibration_samples_skip_hostile_files_and_list_like_every_stage(tmp_path):
    from skutag.exporter.samples import load_directory, select_files

    root = tmp_path / "calib"
    expected = write_hostile_inputs(root / "a")
    for name, data in fuzz_cases(30, seed=4):
        (root / "a" / name).write_bytes(data)
    (root / "a" / "._photo.avif").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (root / "a" / "loop").symlink_to("..")
    with open(os.path.join(os.fsencode(root / "a"), b"caf\xe9.avif"), "wb") as f:
        f.write(hostile_inputs()["photo.avif"][0])
    files = select_files(root, 1000)
    names = [os.path.basename(os.fsencode(p)) for p in files]
    assert len(names) == len(set(names)) == len(expected) + 30 + 1  # no AppleDouble, the loop not walked
    assert b"caf\xe9.avif" in names
    card = ModelCard.for_training("resnet18", CLASSES, image_size=32)
    samples = load_directory(root, card, 1000)
    good = 1 + sum(kind is None for kind in expected.values())  # + the non-UTF-8 AVIF
    assert len(samples) + samples.skipped == len(names) and len(samples) >= good
    assert samples.pixels.shape[1:] == (32, 32, 3)


def test_contact_sheet_survives_hostile_and_non_utf8_paths(tmp_path):
    from skutag.trainer.report import _contact_sheet

    from skutag.listing import local_uri

    write_hostile_inputs(tmp_path)
    name = os.path.join(os.fsencode(tmp_path), b"caf\xe9.heic")
    with open(name, "wb") as f:
        f.write(hostile_inputs()["photo.heic"][0])
    paths = [local_uri(os.fsdecode(name))] + [str(tmp_path / n) for n in sorted(hostile_inputs())]
    rows = [{"path": p, "true_label": "a", "predicted_label": "b", "score": 0.9} for p in paths]
    _contact_sheet(tmp_path / "sheet.png", rows)
    assert (tmp_path / "sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
