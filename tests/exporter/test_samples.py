"""Calibration and check images (exporter.samples): chosen deterministically, disjoint, decoded as `skutag run` decodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skutag.exporter.samples import load_directory, plan, select_files, synthetic

from skutag.card import ModelCard
from tests.support.inputs import write_awkward_inputs

CARD = ModelCard.for_training("resnet18", ["a", "b", "c"], image_size=64)


def test_files_are_chosen_deterministically_and_spread_over_classes(tmp_path):
    for cls in "abcd":
        (tmp_path / cls).mkdir()
        for i in range(10):
            (tmp_path / cls / f"{i:02d}.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    picked = select_files(tmp_path, 8)
    assert picked == select_files(tmp_path, 8)
    assert {p.parent.name for p in picked} == set("abcd") and len(picked) == 8
    assert len(select_files(tmp_path, 100)) == 40


def test_undecodable_files_are_skipped_and_counted(tmp_path):
    expected = write_awkward_inputs(tmp_path)
    loaded = load_directory(tmp_path, CARD, 100)
    assert loaded.skipped == sum(kind is not None for kind in expected.values())
    assert loaded.pixels.shape == (len(expected) - loaded.skipped, 64, 64, 3)
    assert loaded.pixels.dtype == np.uint8


def test_an_empty_image_directory_is_an_input_error(tmp_path):
    from skutag.errors import InputError

    with pytest.raises(InputError, match="no image files"):
        select_files(tmp_path, 4)


def test_synthetic_check_images_are_model_sized_and_reproducible():
    first, second = synthetic(CARD, 4), synthetic(CARD, 4)
    assert first.pixels.shape == (4, 64, 64, 3) and first.source == "synthetic"
    np.testing.assert_array_equal(first.pixels, second.pixels)


def write_images(root: Path, n: int) -> list[Path]:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(root / f"{i:03d}.png")
    return sorted(root.iterdir())


def test_check_images_are_the_calibration_directory_s_other_files(tmp_path):
    files = write_images(tmp_path / "calib", 100)
    calibration, check = plan(tmp_path / "calib", 64, None, 30)
    assert len(calibration) == 64 and len(check) == 30 and not set(calibration) & set(check)
    assert plan(tmp_path / "calib", 64, None, 30) == (calibration, check)  # deterministic
    # too few files for both: calibration leaves min(check_size, N // 2) for the check
    calibration, check = plan(tmp_path / "calib", 256, None, 64)
    assert (len(calibration), len(check)) == (50, 50) and set(calibration) | set(check) == set(files)
    calibration, check = plan(tmp_path / "calib", 256, None, 20)
    assert (len(calibration), len(check)) == (80, 20) and not set(calibration) & set(check)


def test_explicit_check_images_drop_the_calibration_files(tmp_path):
    write_images(tmp_path / "calib", 40)
    write_images(tmp_path / "other", 10)
    calibration, check = plan(tmp_path / "calib", 16, tmp_path / "other", 64)
    assert len(calibration) == 16 and len(check) == 10
    calibration, check = plan(tmp_path / "calib", 16, tmp_path / "calib" / ".." / "calib", 64)
    assert not {p.resolve() for p in calibration} & {p.resolve() for p in check} and check


def test_no_check_image_left_is_an_input_error(tmp_path):
    from skutag.errors import InputError

    write_images(tmp_path / "one", 1)
    with pytest.raises(InputError, match="too few to calibrate and check"):
        plan(tmp_path / "one", 16, None, 64)
