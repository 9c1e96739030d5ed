"""The exporter's refusals (one line, right exit code, no file) and its pure parts, without exporting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skutag.exporter import cli
from skutag.exporter.parity import compare
from skutag.exporter.samples import load_directory, plan, select_files, synthetic

from skutag import artifacts
from skutag.card import ModelCard
from skutag.cli import main
from tests.inputs import write_awkward_inputs

CARD = ModelCard.for_training("resnet18", ["a", "b", "c"], image_size=64)


def invoke(capsys, *args: str) -> tuple[int, str]:
    try:
        main([*args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """An untrained ResNet-18 run dir (enough for refusals, which happen before or at loading)."""
    from skutag.trainer.model import build_model
    from skutag.trainer.weights import save_weights

    run = tmp_path_factory.mktemp("run")
    save_weights(run / "best.safetensors", build_model("resnet18", 3), CARD)
    CARD.save(run / "card.json")
    return run


def assert_refused(capsys, tmp_path: Path, code: int, *args: str) -> str:
    out = tmp_path / "out" / "model.onnx"
    got, err = invoke(capsys, "export", *args, "--out", str(out))
    assert got == code, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not out.with_name("model.onnx.json").exists()
    return err


def test_int8_without_calibration_images_is_refused(capsys, tiny_run, tmp_path):
    err = assert_refused(capsys, tmp_path, 2, str(tiny_run), "--precision", "int8")
    assert "--calib" in err


def test_corrupted_weights_are_refused(capsys, tiny_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    data = (tiny_run / "best.safetensors").read_bytes()
    (run / "best.safetensors").write_bytes(data[: len(data) // 2])
    assert_refused(capsys, tmp_path, 2, str(run))


def test_a_card_that_does_not_match_the_weights_is_refused(capsys, tiny_run, tmp_path):
    from skutag.trainer.model import build_model
    from skutag.trainer.weights import save_weights

    weights = tmp_path / "wrong.safetensors"
    save_weights(weights, build_model("resnet18", 5), CARD)  # card says 3 classes
    err = assert_refused(capsys, tmp_path, 2, str(weights))
    assert "does not match" in err


def test_a_directory_without_weights_is_refused(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not a skutag run dir" in assert_refused(capsys, tmp_path, 2, str(empty))


def test_an_unwritable_out_is_refused_before_loading(capsys, tiny_run, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a directory should be")
    code, err = invoke(capsys, "export", str(tiny_run), "--out", str(blocker / "model.onnx"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot write --out" in err


def test_cli_choices_are_the_table():
    assert set(cli.INT8_TARGETS) == set(artifacts.INT8_TARGETS)
    assert set(cli.CALIB_METHODS) == set(artifacts.CALIB_METHODS)
    names = {artifacts.resolve(p, t).name for p in cli.PRECISIONS for t in cli.INT8_TARGETS}
    assert names == set(artifacts.TARGETS)
    assert {t.precision for t in artifacts.TARGETS.values()} == set(cli.PRECISIONS)


def test_fp16_help_says_it_is_not_faster_on_cpus():
    from click.testing import CliRunner

    result = CliRunner().invoke(cli.export, ["--help"])
    assert "NOT faster on CPUs" in " ".join(result.output.split())


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


def test_parity_figures():
    reference = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype=np.float32)
    same = compare(reference, reference)
    assert same.max_tv == 0 and same.top1_agreement == 1 and same.top5_overlap == 1 and same.k == 3
    assert same.max_embedding_error is None
    flipped = compare(reference, np.array([[0.2, 0.7, 0.1], [0.1, 0.3, 0.6]], dtype=np.float32))
    # image 0: |dprob| 0.5 + 0.5 + 0 -> TV 0.5; image 1: 0
    assert flipped.top1_agreement == 0.5 and flipped.max_tv == pytest.approx(0.5)
    assert flipped.mean_tv == pytest.approx(0.25)
    assert flipped.failures(artifacts.TARGETS["fp32"].limits)
    assert not same.failures(artifacts.TARGETS["int8-cpu"].limits)


def test_embedding_error_is_relative_per_image():
    probs = np.full((2, 3), 1 / 3, dtype=np.float32)
    embedding = np.array([[3.0, 4.0], [30.0, 40.0]], dtype=np.float32)
    moved = embedding + np.array([[0.5, 0.0], [0.5, 0.0]], dtype=np.float32)
    parity = compare(probs, probs, embedding, moved)
    assert parity.max_embedding_error == pytest.approx(0.1) and parity.p99_embedding_error < 0.1
    limits = artifacts.TARGETS["fp32"].limits
    assert any("embedding" in problem for problem in parity.failures(limits))


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
