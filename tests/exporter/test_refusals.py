"""The exporter's refusals (one line, right exit code, no file), before or at loading, and its CLI's choices."""

from __future__ import annotations

from pathlib import Path

import pytest
from skutag.exporter import cli

from skutag import artifacts
from skutag.card import ModelCard
from tests.exporter.support import invoke

CARD = ModelCard.for_training("resnet18", ["a", "b", "c"], image_size=64)


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
    got, _, err = invoke(capsys, "export", *args, "--out", str(out))
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
    code, _, err = invoke(capsys, "export", str(tiny_run), "--out", str(blocker / "model.onnx"))
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


@pytest.mark.parametrize("name", ["m.tflite", "m.xml", "m.pte", "m.ort", "-"])
def test_an_out_suffix_of_another_format_is_refused(capsys, monkeypatch, tiny_run, tmp_path, name):
    monkeypatch.chdir(tmp_path)
    out = Path(name)
    got, _, err = invoke(capsys, "export", str(tiny_run), "--out", name)  # --format onnx
    assert got == 2 and len(err.strip().splitlines()) == 1, err
    assert ("--format" in err or "--ort-format" in err or "model file" in err) and not out.exists()


@pytest.mark.parametrize(
    "fmt, precision, name, missing, extra",
    [
        ("executorch", "fp32", "m.pte", "executorch", "executorch"),
        ("executorch", "int8", "m.pte", "torchao", "executorch"),  # 0.3: ModuleNotFoundError, exit 1
        ("litert", "int8", "m.tflite", "torchao", "litert"),
    ],
)
def test_an_edge_export_without_its_extra_is_one_line_naming_it(
    capsys, monkeypatch, tiny_run, tmp_path, fmt, precision, name, missing, extra
):
    import sys

    monkeypatch.setitem(sys.modules, missing, None)  # what `import NAME` meets uninstalled
    out = tmp_path / name
    args = ["export", str(tiny_run), "--out", str(out), "--format", fmt, "--precision", precision]
    if precision == "int8":
        args += ["--calib", str(tmp_path)]
    got, _, err = invoke(capsys, *args)
    assert got == 2 and len(err.strip().splitlines()) == 1, err
    assert f"pip install 'skutag[{extra}]'" in err and not out.exists()
