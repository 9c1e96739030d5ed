"""The format table and the refusals that need no converter (default suite): `skutag run` takes ONNX only,
`skutag bench` refuses an edge file whose bytes differ from what its export recorded, or that has no report,
and a format whose optional extra is missing is one line naming it, exit 2, in `export` and in `bench`."""

from __future__ import annotations

import json
import sys

import pytest
from skutag.exporter import cli as export_cli
from skutag.exporter import formats

from skutag import artifacts
from skutag.artifacts import format_of
from skutag.card import ModelCard
from skutag.fsio import sha256_file
from tests.exporter.support import invoke


def test_the_cli_offers_the_table_s_formats_and_suffixes_name_them():
    assert tuple(artifacts.FORMATS) == export_cli.FORMATS
    for name, fmt in artifacts.FORMATS.items():
        assert format_of(f"dir/model{fmt.suffix}") == name and artifacts.for_path(f"m{fmt.suffix}") is fmt
    assert format_of("m.ort") == "onnx" and format_of("m.bin") is None
    assert "int8" not in artifacts.get("coreml").precisions  # calibration would need Apple's runtime


def test_the_table_is_coherent_and_every_backend_imports_without_its_extra():
    import importlib

    from skutag import card as card_module
    from skutag.runtime import runtime_target

    suffixes = [s for f in artifacts.FORMATS.values() for s in f.suffixes]
    assert len(suffixes) == len(set(suffixes))
    for fmt in artifacts.FORMATS.values():
        assert set(fmt.precisions) <= set(artifacts.PRECISIONS) and set(fmt.for_cpu) <= set(fmt.precisions)
        assert set(fmt.int8_targets) <= set(artifacts.INT8_TARGETS)
        assert (fmt.extra is None) == (not fmt.export_modules("int8"))  # what needs no extra imports nothing
        backend = importlib.import_module(fmt.backend_module)  # converters are imported only when used
        assert all(callable(getattr(backend, f)) for f in ("export", "report_fields", "load", "versions"))
    assert (
        card_module.PRECISIONS is artifacts.PRECISIONS and card_module.INT8_TARGETS is artifacts.INT8_TARGETS
    )
    for target in artifacts.TARGETS.values():
        card = ModelCard.for_training(
            "resnet18", ["a", "b"], precision=target.precision, int8_target=target.int8_target
        )
        assert (
            runtime_target(card) is target
            and artifacts.resolve(target.precision, target.int8_target) is target
        )


def _fake_export(tmp_path, name: str = "model.pte"):
    """An edge file and the report its export writes (card + sha256 of its bytes)."""
    model = tmp_path / name
    model.write_bytes(b"PTE-" + bytes(range(256)) * 64)
    card = ModelCard.for_training("resnet18", ["a", "b"], image_size=32)
    report = {"card": card.to_dict(), "files": {model.name: sha256_file(model)}}
    formats.report_path(model).write_text(json.dumps(report))
    return model, card


def test_the_recorded_hash_admits_the_file_and_refuses_it_truncated(tmp_path, capsys):
    model, card = _fake_export(tmp_path)
    assert formats.verified_card(model)[1] == card
    model.write_bytes(model.read_bytes()[:100])
    code, _, stderr = invoke(capsys, "bench", str(model), "--out", str(tmp_path / "b"), "--batch-sizes", "1")
    assert code == 2 and stderr.count("\n") == 1 and "truncated, corrupted or replaced" in stderr
    formats.report_path(model).unlink()
    code, _, stderr = invoke(capsys, "bench", str(model), "--out", str(tmp_path / "b"), "--batch-sizes", "1")
    assert code == 2 and stderr.count("\n") == 1 and "has no skutag report beside it" in stderr


@pytest.mark.parametrize("name", ["model.pte", "model.tflite", "model.xml"])
def test_run_takes_onnx_only_and_says_so(tmp_path, capsys, small_catalog, name):
    model, _ = _fake_export(tmp_path, name)
    code, _, stderr = invoke(capsys, "run", str(model), str(small_catalog), "--out", str(tmp_path / "out"))
    assert code == 2 and stderr.count("\n") == 1 and "skutag run takes ONNX models" in stderr
    assert not (tmp_path / "out").exists()


MISSING = [
    ("executorch", "fp32"),
    ("executorch", "int8"),
    ("litert", "fp32"),
    ("litert", "int8"),
    ("openvino", "fp32"),
    ("openvino", "int8"),
    ("coreml", "fp16"),
]


def _uninstall(monkeypatch, modules) -> None:
    """What `import` meets where the extra is not installed (whether or not it is installed here)."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module.split(".")[0], None)


@pytest.mark.parametrize("name, precision", MISSING)
def test_a_missing_extra_is_exit_2_and_one_line_naming_it(
    capsys, monkeypatch, tmp_path, small_catalog, name, precision
):
    fmt = artifacts.get(name)
    _uninstall(monkeypatch, fmt.export_modules(precision))
    out = tmp_path / f"model{fmt.suffix}"
    calib = ["--calib", str(small_catalog)] if precision == "int8" else []
    code, _, stderr = invoke(
        capsys, "export", str(tmp_path), "--out", str(out), "--format", name, "--precision", precision, *calib
    )
    expected = f"skutag export --format {name} needs the {name} extra: pip install 'skutag[{name}]'"
    assert code == 2 and stderr.count("\n") == 1 and expected in stderr, stderr
    assert "Traceback" not in stderr and "ModuleNotFoundError" not in stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["model.pte", "model.tflite", "model.xml"])
def test_bench_of_a_format_whose_extra_is_missing_is_exit_2_and_one_line(capsys, monkeypatch, tmp_path, name):
    model, _ = _fake_export(tmp_path, name)
    if name.endswith(".xml"):  # the IR's weights are part of the model
        model.with_suffix(".bin").write_bytes(b"weights")
        report = json.loads(formats.report_path(model).read_text())
        report["files"] = formats.file_hashes(model)
        formats.report_path(model).write_text(json.dumps(report))
    fmt = artifacts.for_path(model)
    _uninstall(monkeypatch, fmt.runtime)
    code, _, stderr = invoke(capsys, "bench", str(model), "--out", str(tmp_path / "b"), "--batch-sizes", "1")
    expected = f"skutag bench {model.name} needs the {fmt.extra} extra: pip install 'skutag[{fmt.extra}]'"
    assert code == 2 and stderr.count("\n") == 1 and expected in stderr, stderr
