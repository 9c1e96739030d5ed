"""`skutag export` end to end on a small trained ResNet-18 (64 px): fp32, fp16, int8 in ONNX Runtime."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from skutag.exporter.graph import EMBEDDING, INPUT_NAME, PROBS, ExportModule
from skutag.exporter.quantize import optimised_op_types, quantised_conv_summary
from skutag.exporter.samples import load_directory

from skutag import artifacts
from skutag.card import ModelCard
from skutag.runtime import create_session
from tests.exporter.support import invoke, session_card


@pytest.fixture(scope="module")
def torch_module(trained_run):
    from skutag.trainer.weights import load_trained

    model, card = load_trained(trained_run[0])
    return model, card


def export(capsys, run: Path, out: Path, *options: str) -> dict:
    code, stdout, stderr = invoke(capsys, "export", str(run), "--out", str(out), *options)
    assert code == 0, stderr
    assert "parity" in stdout
    return json.loads(out.with_name(out.name + ".json").read_text())


def assert_card(session, run_card: ModelCard, precision: str, int8_target: str | None = None) -> None:
    assert session_card(session) == run_card.replace(precision=precision, int8_target=int8_target)
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["skutag.classes"]) == list(run_card.classes)
    assert json.loads(metadata["skutag.preprocessing"])["image_size"] == run_card.image_size
    assert metadata["skutag.precision"] == precision


def assert_passed(report: dict, target: str) -> None:
    limits = artifacts.TARGETS[target].limits
    parity = report["parity"]
    assert parity["images"] > 0 and report["target"] == target
    assert parity["max_tv"] < limits.max_tv and parity["p99_tv"] < limits.p99_tv
    assert parity["top1_agreement"] >= limits.min_top1_agreement


def test_fp32_export_is_one_checked_self_describing_file(
    capsys, trained_run, torch_module, small_catalog, tmp_path
):
    run, card = trained_run
    out = tmp_path / "model.onnx"
    report = export(capsys, run, out, "--check-images", str(small_catalog), "--ort-format")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.json", "model.ort"]
    onnx.checker.check_model(str(out), full_check=True)
    nodes = onnx.load(str(out)).graph.node
    assert "Gather" not in {node.op_type for node in nodes}, (
        "flatten exported as as_strided: the NHWC permute must be made contiguous"
    )
    on_input = [node.op_type for node in nodes if INPUT_NAME in node.input]
    assert on_input == ["Cast"], "uint8 must be cast to float before any layout change"
    assert_passed(report, "fp32")
    assert report["parity"]["sample"]["source"] == str(small_catalog)
    assert report["opset"] == 18 and report["file_bytes"] == out.stat().st_size
    assert report["inputs"] == [{"name": "image", "dtype": "uint8", "shape": ["batch", 64, 64, 3]}]
    assert report["outputs"] == [{"name": "probs", "dtype": "float32", "shape": ["batch", card.num_classes]}]
    assert set(report["versions"]) == {"skutag", "torch", "onnx", "onnxruntime"}

    session, _ = create_session(out, "cpu")
    assert_card(session, card, "fp32")
    module = ExportModule(torch_module[0], card).eval()
    pixels = load_directory(small_catalog, card, 17).pixels
    for batch in (1, 3, 17):
        probs = session.run([PROBS], {INPUT_NAME: pixels[:batch]})[0]
        with torch.inference_mode():
            expected = module(torch.from_numpy(pixels[:batch])).numpy()
        assert probs.shape == (batch, card.num_classes)
        np.testing.assert_allclose(probs, expected, atol=1e-4)

    ort_session, _ = create_session(tmp_path / "model.ort", "cpu")
    np.testing.assert_allclose(ort_session.run([PROBS], {INPUT_NAME: pixels})[0], probs, atol=1e-5)


def test_fp16_keeps_uint8_in_and_float32_out(capsys, trained_run, small_catalog, tmp_path):
    run, card = trained_run
    out = tmp_path / "model-fp16.onnx"
    report = export(capsys, run, out, "--precision", "fp16", "--check-images", str(small_catalog))
    assert_passed(report, "fp16")
    proto = onnx.load(str(out))
    conv_weights = {node.input[1] for node in proto.graph.node if node.op_type == "Conv"}
    weight_types = {init.data_type for init in proto.graph.initializer if init.name in conv_weights}
    assert weight_types == {onnx.TensorProto.FLOAT16}
    session, _ = create_session(out, "cpu")
    assert_card(session, card, "fp16")
    assert session.get_inputs()[0].type == "tensor(uint8)"
    assert session.get_outputs()[0].type == "tensor(float)"
    probs = session.run([PROBS], {INPUT_NAME: np.zeros((3, 64, 64, 3), np.uint8)})[0]
    assert probs.dtype == np.float32 and probs.shape == (3, card.num_classes)


def test_int8_cpu_is_calibrated_and_every_conv_quantised(capsys, trained_run, small_catalog, tmp_path):
    run, card = trained_run
    out = tmp_path / "model-int8.onnx"
    report = export(
        capsys,
        run,
        out,
        "--precision",
        "int8",
        "--calib",
        str(small_catalog),
        "--calib-size",
        "40",
        "--calib-method",
        "entropy",
    )
    assert_passed(report, "int8-cpu")
    # check images default to the --calib files that calibration did not use
    assert report["parity"]["images"] == 64 and report["parity"]["shared_with_calibration"] == 0
    calibration = report["calibration"]
    # 40 images: the last calibration batch is short, which ORT's histogram collectors cannot merge
    # unless the reader is strided (exporter.quantize.make_reader).
    assert calibration["count"] == 40 and calibration["method"] == "entropy"
    assert calibration["ort_cpu_graph"] == {"quantised_convs": 20, "float_convs": 0, "kept_float_convs": 0}
    assert calibration["source"] == str(small_catalog) and calibration["activation_type"] == "QUInt8"
    session, _ = create_session(out, "cpu")
    assert_card(session, card, "int8", "cpu")
    assert session.get_inputs()[0].type == "tensor(uint8)"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, out.name + ".json"]
    for level in ("extended", "all"):
        ops = optimised_op_types(out, level)
        convs = quantised_conv_summary(ops)
        assert convs["quantised_convs"] == 20 and convs["float_convs"] == 0, ops
    assert out.stat().st_size < 0.3 * (run / "best.safetensors").stat().st_size


@pytest.mark.slow  # the default run checks the same zero points on test_int8_onnx's tensorrt export
def test_int8_tensorrt_is_symmetric(capsys, trained_run, small_catalog, tmp_path):
    run, _ = trained_run
    out = tmp_path / "model-trt.onnx"
    report = export(
        capsys,
        run,
        out,
        "--precision",
        "int8",
        "--int8-target",
        "tensorrt",
        "--calib",
        str(small_catalog),
        "--calib-size",
        "24",
    )
    assert_passed(report, "int8-tensorrt")
    proto = onnx.load(str(out))
    initialisers = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
    zero_points = [initialisers[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    card_text = next(p.value for p in proto.metadata_props if p.key == "skutag.card")
    assert json.loads(card_text)["int8_target"] == "tensorrt"


def test_embeddings_from_a_safetensors_file(capsys, trained_run, torch_module, tmp_path):
    run, card = trained_run
    out = tmp_path / "model-emb.onnx"
    report = export(capsys, run / "best.safetensors", out, "--embeddings", "--check-size", "8")
    assert [o["name"] for o in report["outputs"]] == [PROBS, EMBEDDING]
    session, _ = create_session(out, "cpu")
    pixels = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    probs, embedding = session.run([PROBS, EMBEDDING], {INPUT_NAME: pixels})
    assert probs.shape == (5, card.num_classes) and embedding.shape == (5, 512)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_float_input(capsys, trained_run, small_catalog, tmp_path):
    run, card = trained_run
    out = tmp_path / "model-float.onnx"
    report = export(
        capsys, run, out, "--input", "float", "--check-images", str(small_catalog), "--check-size", "16"
    )
    assert_passed(report, "fp32")
    assert report["inputs"][0] == {"name": "image", "dtype": "float32", "shape": ["batch", 3, 64, 64]}
    session, _ = create_session(out, "cpu")
    assert session_card(session) == card.replace(input_dtype="float32", input_layout="NCHW")


def test_a_failed_parity_check_writes_nothing(capsys, monkeypatch, trained_run, tmp_path):
    impossible = artifacts.Limits(
        max_tv=0.0, p99_tv=0.0, min_top1_agreement=1.0, min_top5_overlap=1.0, max_embedding_error=0.0
    )
    monkeypatch.setitem(
        artifacts.TARGETS, "fp32", dataclasses.replace(artifacts.TARGETS["fp32"], limits=impossible)
    )
    out = tmp_path / "model.onnx"
    code, _, stderr = invoke(capsys, "export", str(trained_run[0]), "--out", str(out), "--check-size", "4")
    assert code == 1
    assert len(stderr.strip().splitlines()) == 1 and "parity check" in stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.gpu
def test_fp16_runs_on_cuda_like_fp32_on_the_cpu(capsys, trained_run, small_catalog, tmp_path):
    run, card = trained_run
    fp32, fp16 = tmp_path / "fp32.onnx", tmp_path / "fp16.onnx"
    export(capsys, run, fp32, "--check-size", "4")
    export(capsys, run, fp16, "--precision", "fp16", "--check-size", "4")
    pixels = load_directory(small_catalog, card, 32).pixels
    cpu, _ = create_session(fp32, "cpu")
    cuda, info = create_session(fp16, "cuda")
    assert info.device == "cuda"
    expected = cpu.run([PROBS], {INPUT_NAME: pixels})[0]
    probs = cuda.run([PROBS], {INPUT_NAME: pixels})[0]
    limits = artifacts.TARGETS["fp16"].limits
    assert 0.5 * np.abs(probs - expected).sum(axis=1).max() < limits.max_tv
    assert np.mean(probs.argmax(1) == expected.argmax(1)) >= limits.min_top1_agreement
