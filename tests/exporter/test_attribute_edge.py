"""Attribute heads in an edge format (`make test-edge`): OpenVINO, ExecuTorch and LiteRT, fp32 and int8, carry
every head as an output (OpenVINO: float in int8) and pass the per-head parity gate in the format's own runtime."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from skutag.exporter import formats
from skutag.exporter.head_parity import split_outputs
from skutag.exporter.samples import load_directory

from skutag import artifacts

pytestmark = pytest.mark.edge


@pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="skutag[openvino] not installed")
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_openvino_carries_and_checks_every_head(attribute_run, small_catalog, tmp_path, precision):
    from skutag.exporter.pipeline import ExportRequest, run_export

    run, card = attribute_run
    out = tmp_path / f"model-{precision}.xml"
    result = run_export(
        ExportRequest(
            source=run,
            out=out,
            format="openvino",
            precision=precision,
            calib_dir=small_catalog if precision == "int8" else None,
            calib_size=40,
        )
    )
    report = json.loads(result.report.read_text())
    figures = report["parity"]["attributes"]
    assert set(figures) == {"color", "style"}
    limits = artifacts.TARGETS[report["target"]].limits
    assert all(f["agreement"] >= limits.min_top1_agreement for f in figures.values())
    fmt, loaded_card, runner = formats.load_runner(out)
    assert loaded_card.attributes == card.attributes
    pixels = load_directory(small_catalog, card, 4).pixels
    probs, embedding, heads = split_outputs(runner.outputs(pixels), card.attributes, embeddings=False)
    assert probs.shape == (4, len(card.classes)) and embedding is None
    assert heads["color"].shape == (4, 3) and np.allclose(heads["color"].sum(axis=1), 1, atol=1e-3)
    assert heads["style"].shape == (4, 2)
    if precision == "int8":
        tail = report["notes"]["float_tail"]  # the IR's ops walked back from every output, none FakeQuantize
        assert {"Sigmoid", "Softmax"} <= set(tail) and "FakeQuantize" not in tail


RUNTIMES = {"executorch": ("executorch.runtime", ".pte"), "litert": ("litert_torch", ".tflite")}


@pytest.mark.parametrize(
    ("fmt", "precision"),
    [
        pytest.param(
            f,
            p,
            marks=pytest.mark.skipif(
                importlib.util.find_spec(RUNTIMES[f][0].split(".")[0]) is None,
                reason=f"skutag[{f}] not installed",
            ),
        )
        for f in RUNTIMES
        for p in ("fp32", "int8")
    ],
)
def test_executorch_and_litert_carry_and_check_every_head(
    attribute_run, small_catalog, tmp_path, fmt, precision
):
    """Each head an output of its own, in the card's order (LiteRT: mapped by its signature's output
    positions), passing the per-head parity gate in the format's own runtime."""
    suffix = RUNTIMES[fmt][1]
    from skutag.exporter.pipeline import ExportRequest, run_export

    run, card = attribute_run
    out = tmp_path / f"model-{precision}{suffix}"
    result = run_export(
        ExportRequest(
            source=run,
            out=out,
            format=fmt,
            precision=precision,
            calib_dir=small_catalog if precision == "int8" else None,
            calib_size=40,
        )
    )
    report = json.loads(result.report.read_text())
    figures = report["parity"]["attributes"]
    assert set(figures) == {"color", "style"}
    limits = artifacts.TARGETS[report["target"]].limits
    assert all(f["agreement"] >= limits.min_top1_agreement for f in figures.values())
    _, loaded_card, runner = formats.load_runner(out)
    assert loaded_card.attributes == card.attributes
    pixels = load_directory(small_catalog, card, 1).pixels  # edge formats run batch 1
    values = runner.outputs(pixels)
    probs, _, heads = split_outputs(
        values, card.attributes, embeddings=len(values) > 1 + len(card.attributes)
    )
    assert probs.shape == (1, len(card.classes)) and np.allclose(probs.sum(axis=1), 1, atol=1e-3)
    assert heads["color"].shape == (1, 3) and np.allclose(heads["color"].sum(axis=1), 1, atol=1e-3)
    assert heads["style"].shape == (1, 2) and ((heads["style"] >= 0) & (heads["style"] <= 1)).all()
