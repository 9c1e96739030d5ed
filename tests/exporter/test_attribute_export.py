"""Attribute heads in exported files: every head inside the graph, its float tail, its parity gate.

The run dir (tests/support/attribute_run.py) has a label head and two attribute heads. fp32,
fp16 and int8 (cpu U8S8) ONNX files each get `attr.color` and `attr.style` beside `probs`,
with the card's temperatures inside the graph; int8 keeps every head float; the parity gate
checks every head and refuses a file whose head moved.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from skutag.exporter import quantize
from skutag.exporter.graph import INPUT_NAME, ExportModule
from skutag.exporter.head_parity import head_failures, heads_parity
from skutag.exporter.samples import load_directory, model_input

from skutag import artifacts
from skutag.heads import MULTI, AttributeHead
from skutag.runtime import create_session
from tests.exporter.support import session_card

CALIB_SIZE = 40


@pytest.fixture(scope="module")
def exports(attribute_run, small_catalog, tmp_path_factory):
    from skutag.exporter.pipeline import ExportRequest, run_export

    run, _ = attribute_run
    work = tmp_path_factory.mktemp("attr-export")
    results = {}
    for name, precision in (("fp32", "fp32"), ("fp16", "fp16"), ("int8", "int8")):
        request = ExportRequest(
            source=run,
            out=work / f"{name}.onnx",
            precision=precision,
            embeddings=name == "fp32",
            calib_dir=small_catalog if precision == "int8" else None,
            calib_size=CALIB_SIZE,
        )
        results[name] = run_export(request)
    return results


def outputs_of(path, pixels):
    session, _ = create_session(path, "cpu")
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {INPUT_NAME: pixels}), strict=True)), session


def test_every_head_is_an_output_with_its_temperature_inside(exports, attribute_run, small_catalog):
    from skutag.trainer.weights import load_trained

    model, card = load_trained(attribute_run[0])
    pixels = load_directory(small_catalog, card, 16).pixels
    values, session = outputs_of(exports["fp32"].model, pixels)
    assert list(values) == ["probs", "embedding", "attr.color", "attr.style"]
    assert values["attr.color"].shape == (16, 3) and values["attr.style"].shape == (16, 2)
    assert session_card(session).attributes == card.attributes
    assert {h.reads for h in card.attributes} == {("pooled", "colour")}  # the colour statistics, in the graph
    with torch.inference_mode():
        logits = model(torch.from_numpy(model_input(pixels, card, "float")), all_heads=True)
    color, style = card.attributes
    expected_color = torch.softmax(logits["color"] / color.temperature, dim=1).numpy()
    expected_style = torch.sigmoid(logits["style"] / style.temperature).numpy()
    assert np.allclose(values["attr.color"], expected_color, atol=1e-4)
    assert np.allclose(values["attr.style"], expected_style, atol=1e-4)
    assert np.allclose(values["attr.color"].sum(axis=1), 1, atol=1e-5)  # softmax for single
    assert not np.allclose(values["attr.style"].sum(axis=1), 1, atol=1e-2)  # sigmoid for multi
    assert 0.05 < values["attr.color"].max(axis=1).mean() < 0.999  # soft: the parity check sees something


@pytest.mark.parametrize("name", ["fp32", "fp16", "int8"])
def test_the_report_has_every_head_within_limits(exports, name):
    result = exports[name]
    report = json.loads(result.report.read_text())
    figures = report["parity"]["attributes"]
    assert set(figures) == {"color", "style"}
    limits = artifacts.TARGETS[result.summary["target"]].limits
    assert not head_failures(figures, limits)
    assert [o["name"] for o in report["outputs"]][-2:] == ["attr.color", "attr.style"]
    assert [h["name"] for h in report["card"]["attributes"]] == ["color", "style"]


def test_int8_keeps_every_head_float(exports):
    proto = onnx.load(str(exports["int8"].model))
    assert quantize.eight_bit_tail(proto) == []
    tail_ops = {node.op_type for node in quantize.tail_nodes(proto)}
    assert {"Softmax", "Sigmoid"} <= tail_ops  # both kinds of head are in the walked (float) tail
    assert "AveragePool" in tail_ops  # the colour statistics' first op: all they compute is in the float tail
    convs = quantize.quantised_conv_summary(quantize.optimised_op_types(exports["int8"].model))
    assert convs["quantised_convs"] > 0


def test_the_gate_refuses_a_moved_head():
    head = AttributeHead("style", MULTI, ("print", "zip"), (0.5, 0.5))
    rng = np.random.default_rng(0)
    reference = rng.random((50, 2))
    figures = heads_parity([head], {"style": reference}, {"style": reference + 1e-6})
    limits = artifacts.TARGETS["fp32"].limits
    assert head_failures(figures, limits) == []
    moved = heads_parity([head], {"style": reference}, {"style": 1 - reference})
    problems = head_failures(moved, limits)
    assert any("attribute style: agreement" in p for p in problems)
    assert any("attribute style: max per-image difference" in p for p in problems)


def test_a_card_and_model_that_disagree_are_refused(attribute_run):
    from skutag.trainer.weights import load_trained

    from skutag.errors import InputError

    model, card = load_trained(attribute_run[0])
    with pytest.raises(InputError, match="are not the model's"):
        ExportModule(model, card.replace(attributes=card.attributes[:1]))
    with pytest.raises(InputError, match="are not the model's"):
        ExportModule(model, card.replace(attributes=None))
