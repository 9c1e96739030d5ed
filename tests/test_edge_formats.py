"""The format table and the refusals that need no converter (default suite): `skutag run` takes ONNX only,
`skutag bench` refuses an edge file whose bytes differ from what its export recorded, or that has no report."""

from __future__ import annotations

import json

import pytest
from skutag.exporter import cli as export_cli
from skutag.exporter import formats

from skutag.artifacts import format_of
from skutag.card import ModelCard
from skutag.fsio import sha256_file
from tests.test_exporter_export import invoke


def test_the_cli_offers_the_table_s_formats_and_suffixes_name_them():
    assert tuple(formats.FORMATS) == export_cli.FORMATS
    for name, fmt in formats.FORMATS.items():
        assert format_of(f"dir/model{fmt.suffix}") == name and formats.for_path(f"m{fmt.suffix}") is fmt
    assert format_of("m.ort") == "onnx" and format_of("m.bin") is None
    assert "int8" not in formats.get("coreml").precisions  # calibration would need Apple's runtime


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
