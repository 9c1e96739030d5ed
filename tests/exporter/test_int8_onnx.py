"""int8 exports of a small trained ResNet-18 (64 px): float head, gates, the card's target, refusals.

Every int8 export (cpu U8S8 and tensorrt S8S8) keeps the pooled features and everything
after them in float; `embedding` stays within a measured tolerance of the fp32 model's;
a deliberately broken int8 file fails the parity gate; `skutag run --device tensorrt`
refuses a CPU-target int8 file in one line before any TensorRT work; files with
external data, or whose graph is not what the card says, are refused on load.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from skutag.exporter import quantize
from skutag.exporter.graph import EMBEDDING, INPUT_NAME, PROBS
from skutag.exporter.parity import Outputs, ParityError, check, compare, relative_error
from skutag.exporter.samples import load_files, plan

from skutag import artifacts
from skutag.card import ModelCard
from skutag.runtime import create_session, gpu_present
from tests.support.cli import skutag

# Measured on this fixture (ResNet-18 64 px, 20 Adam steps, 40 calibration images, 80 other images):
# the worst per-image relative L2 error of int8's embedding against fp32's was 0.020 (cpu) and
# 0.030 (tensorrt); 2x the worst is the tolerance.
EMBEDDING_TOLERANCE = 0.06
CALIB_SIZE = 40
EIGHT_BIT = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
POOLING = {"GlobalAveragePool", "ReduceMean", "AveragePool", "GlobalMaxPool", "ReduceMax", "MaxPool"}


@pytest.fixture(scope="module")
def exports(trained_run, small_catalog, tmp_path_factory) -> dict[str, Path]:
    """fp32, int8 cpu and int8 tensorrt files of the trained run, all with an `embedding` output,
    written by the export pipeline (parity-checked against PyTorch on the way)."""
    from skutag.exporter.pipeline import ExportRequest, run_export

    run, _ = trained_run
    work = tmp_path_factory.mktemp("int8")
    paths = {}
    for name in ("fp32", "int8-cpu", "int8-tensorrt"):
        request = ExportRequest(
            source=run,
            out=work / f"{name}.onnx",
            precision=name.split("-")[0],
            int8_target=name.split("-")[-1],
            embeddings=True,
            calib_dir=small_catalog if name != "fp32" else None,
            calib_size=CALIB_SIZE,
        )
        paths[name] = run_export(request).model
    return paths


@pytest.fixture(scope="module")
def check_pixels(small_catalog, trained_run) -> np.ndarray:
    """The catalog images the int8 calibration did not see (as `skutag export` chooses them)."""
    _, card = trained_run
    _, check_files = plan(small_catalog, CALIB_SIZE, None, 1000)
    return load_files(check_files, card, str(small_catalog)).pixels


def run_model(path: Path, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session, _ = create_session(path, "cpu")
    probs, embedding = session.run([PROBS, EMBEDDING], {INPUT_NAME: pixels})
    return probs, embedding


def tail(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes from the outputs back to (and including) the pooling op, along every input but shapes."""
    producers = {name: node for node in proto.graph.node for name in node.output}
    seen, frontier = {}, [o.name for o in proto.graph.output]
    while frontier:
        node = producers.get(frontier.pop())
        if node is None or node.output[0] in seen or node.op_type in ("Shape", "Constant"):
            continue
        seen[node.output[0]] = node
        if node.op_type not in POOLING:
            frontier.extend(node.input)
    return list(seen.values())


def eight_bit_nodes(proto: onnx.ModelProto) -> list[str]:
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.output]}
    types.update((i.name, i.data_type) for i in inferred.initializer)
    return [
        f"{node.op_type} {node.name}"
        for node in tail(proto)
        if "Quantize" in node.op_type
        or any(types.get(name) in EIGHT_BIT for name in [*node.input, *node.output] if name)
    ]


@pytest.mark.parametrize("target", ["int8-cpu", "int8-tensorrt"])
def test_nothing_after_the_pooled_features_touches_8_bit_tensors(exports, target):
    proto = onnx.load(str(exports[target]))
    ops = {node.op_type for node in tail(proto)}
    assert {"ReduceMean", "Gemm", "Softmax"} <= ops, ops  # the walk reached the pooling op
    assert eight_bit_nodes(proto) == []
    assert any(node.op_type == "QuantizeLinear" for node in proto.graph.node)  # the body is int8
    on_input = [node.op_type for node in proto.graph.node if INPUT_NAME in node.input]
    assert on_input == ["Cast"]


def test_the_check_sees_8_bit_heads(exports, small_catalog, trained_run, tmp_path):
    """ORT's default settings (the head quantised too): the same checks find the 8-bit nodes."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    _, card = trained_run
    calibration = load_files(plan(small_catalog, 16, None, 16)[0], card, str(small_catalog))
    out = tmp_path / "whole.onnx"
    reader = quantize.make_reader(calibration, card, INPUT_NAME, "uint8")
    quantize_static(str(exports["fp32"]), str(out), reader, quant_format=QuantFormat.QDQ)
    found = eight_bit_nodes(onnx.load(str(out)))
    assert any(op.startswith("DequantizeLinear") for op in found), found
    assert quantize.eight_bit_tail(onnx.load(str(out)))  # the exporter's own guard sees them as well


@pytest.mark.parametrize("target", ["int8-cpu", "int8-tensorrt"])
def test_int8_embedding_is_within_tolerance_of_fp32(exports, check_pixels, target):
    fp32_probs, fp32_embedding = run_model(exports["fp32"], check_pixels)
    probs, embedding = run_model(exports[target], check_pixels)
    errors = relative_error(fp32_embedding, embedding)
    assert errors.max() < EMBEDDING_TOLERANCE, errors.max()
    assert len(np.unique(embedding)) > 256  # not 256 levels of one 8-bit tensor
    assert not compare(fp32_probs, probs).failures(artifacts.TARGETS[target].limits)


@pytest.mark.parametrize("target", ["int8-cpu", "int8-tensorrt"])
def test_the_report_and_card_say_which_int8(exports, target):
    report = json.loads(exports[target].with_name(exports[target].name + ".json").read_text())
    parity = report["parity"]
    assert parity["shared_with_calibration"] == 0 and parity["images"] == 64
    assert parity["max_embedding_error"] < artifacts.TARGETS[target].limits.max_embedding_error
    assert report["card"]["int8_target"] == target.removeprefix("int8-")
    session, _ = create_session(exports[target], "cpu")
    assert session.get_modelmeta().custom_metadata_map["skutag.int8_target"] == target.removeprefix("int8-")


def test_tensorrt_int8_is_symmetric(exports):
    """S8S8 for TensorRT: every QuantizeLinear's zero point an int8 0 (test_onnx_export's CLI version of
    this check is marked slow)."""
    proto = onnx.load(str(exports["int8-tensorrt"]))
    initialisers = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
    zero_points = [initialisers[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)


def test_a_broken_int8_model_fails_the_gate(exports, trained_run, small_catalog, check_pixels, tmp_path):
    """The real int8 file passes; with its (float) head scrambled, or its probabilities moved, it fails."""
    from skutag.exporter.samples import SampleSet

    _, card = trained_run
    limits = artifacts.TARGETS["int8-cpu"].limits
    reference = Outputs(*run_model(exports["fp32"], check_pixels))
    check_set = SampleSet(check_pixels, str(small_catalog), 0)
    check(exports["int8-cpu"], reference, check_set, card, "uint8", limits, "int8-cpu")  # passes

    proto = onnx.load(str(exports["int8-cpu"]))
    gemm = next(node for node in proto.graph.node if node.op_type == "Gemm")
    for init in proto.graph.initializer:
        if init.name in gemm.input[1:]:  # weight [K, D] and bias [K]: rows shifted by one class
            init.CopyFrom(
                onnx.numpy_helper.from_array(np.roll(onnx.numpy_helper.to_array(init), 1, 0), init.name)
            )
    scrambled = tmp_path / "scrambled.onnx"
    onnx.save(proto, str(scrambled))
    with pytest.raises(ParityError, match="per-image TV"):
        check(scrambled, reference, check_set, card, "uint8", limits, "int8-cpu")

    probs, _ = run_model(exports["int8-cpu"], check_pixels)
    moved = compare(reference.probs, np.roll(probs, 1, axis=1)).failures(limits)
    assert any("top-1" in p for p in moved) and any("TV" in p for p in moved)


def test_tensorrt_refuses_a_cpu_int8_model_in_one_line_before_any_tensorrt_work(
    exports, small_catalog, tmp_path
):
    cache = tmp_path / "trt-cache"
    result = skutag(
        "run", exports["int8-cpu"], small_catalog, "--out", tmp_path / "out", "--device", "tensorrt",
        "--trt-cache", cache, "--workers", "0",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "--int8-target tensorrt" in lines[0] and "int8 model for CPUs" in lines[0]
    assert not cache.exists()  # provider_chain creates the cache: no TensorRT work was started
    assert not (tmp_path / "out").exists()  # refused before OUT (its plan, its manifest) was touched
    if not gpu_present():  # the TensorRT-target file gets past the card check, to the GPU check (exit 1)
        other = skutag(
            "run", exports["int8-tensorrt"], small_catalog, "--out", tmp_path / "out2", "--device", "tensorrt",
            "--trt-cache", cache, "--workers", "0",
        )  # fmt: skip
        assert other.returncode == 1 and "no NVIDIA GPU" in other.stderr


def test_an_old_int8_card_gets_its_target_from_the_graph(exports, tmp_path):
    from skutag.batchrun.predict.model import read_contract

    for target in ("cpu", "tensorrt"):
        proto = onnx.load(str(exports[f"int8-{target}"]))
        for prop in proto.metadata_props:
            if prop.key == "skutag.card":
                data = json.loads(prop.value)
                del data["int8_target"]  # as skutag wrote int8 cards before the target was recorded
                prop.value = json.dumps(data)
        old = tmp_path / f"old-{target}.onnx"
        onnx.save(proto, str(old))
        assert read_contract(old).card.int8_target == target


def test_external_data_and_a_graph_unlike_its_card_are_refused_on_load(exports, small_catalog, tmp_path):
    proto = onnx.load(str(exports["fp32"]))
    split = tmp_path / "split" / "model.onnx"
    split.parent.mkdir()
    onnx.save_model(proto, str(split), save_as_external_data=True, location="weights.bin", size_threshold=0)
    result = skutag("run", split, small_catalog, "--out", tmp_path / "out1")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "external data" in result.stderr

    proto = onnx.load(str(exports["fp32"]))  # save_model moved the weights of the one above out
    for prop in proto.metadata_props:
        if prop.key == "skutag.card":
            prop.value = ModelCard.from_json(prop.value).replace(image_size=96, resize_size=110).to_json()
    unlike = tmp_path / "unlike.onnx"
    onnx.save(proto, str(unlike))
    result = skutag("run", unlike, small_catalog, "--out", tmp_path / "out2")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "its card describes" in result.stderr
