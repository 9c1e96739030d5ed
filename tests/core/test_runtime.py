"""skutag.runtime: the active provider is checked, never assumed; the card comes back out of the file."""

from __future__ import annotations

import pytest

from skutag.artifacts import TARGETS
from skutag.card import METADATA_KEY, ModelCard
from skutag.errors import DeviceError, InputError
from skutag.runtime import (
    check_device,
    create_session,
    gpu_present,
    provider_chain,
    runtime_target,
)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from skutag.exporter.graph import export_fp32
    from skutag.trainer.model import build_model

    card = ModelCard.for_training("resnet18", ["a", "b", "c"], image_size=64)
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    export_fp32(build_model("resnet18", 3).eval(), card, path)
    return path, card


def test_cpu_session_and_card_round_trip(tiny_onnx):
    path, card = tiny_onnx
    session, info = create_session(path, "cpu")
    assert info.device == "cpu" and info.providers[0] == "CPUExecutionProvider"
    assert ModelCard.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY]) == card


@pytest.mark.skipif(gpu_present(), reason="checks the behaviour of a machine without a GPU")
def test_explicit_cuda_fails_loudly_without_a_gpu(tiny_onnx):
    with pytest.raises(DeviceError, match="--device cuda was requested"):
        create_session(tiny_onnx[0], "cuda")


@pytest.mark.skipif(gpu_present(), reason="checks the behaviour of a machine without a GPU")
def test_auto_falls_back_and_says_why(tiny_onnx):
    _, info = create_session(tiny_onnx[0], "auto")
    assert info.device == "cpu" and info.requested == "auto" and info.fallback_reason


def test_missing_and_corrupt_models_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        create_session(tmp_path / "nope.onnx", "cpu")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    with pytest.raises(InputError, match="cannot load ONNX model"):
        create_session(bad, "cpu")


def test_gpu_provider_chains_end_on_the_cpu(tmp_path):
    card = ModelCard.for_training("resnet18", ["a", "b"], image_size=224)
    assert provider_chain("cpu") == ["CPUExecutionProvider"]
    cuda = provider_chain("cuda")
    assert cuda[0][0] == "CUDAExecutionProvider" and cuda[0][1]["cudnn_conv_algo_search"] == "HEURISTIC"
    trt = provider_chain("tensorrt", card, trt_cache_dir=tmp_path, batch_size=32)
    name, options = trt[0]
    assert name == "TensorrtExecutionProvider" and options["trt_engine_cache_path"] == str(tmp_path)
    for key in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
        assert options[key] == "image:32x224x224x3"
    assert trt[-1] == "CPUExecutionProvider"
    float_input = card.replace(input_dtype="float32", input_layout="NCHW")
    float_options = provider_chain("tensorrt", float_input, batch_size=8, trt_cache_dir=tmp_path)[0][1]
    assert float_options["trt_profile_max_shapes"] == "image:8x3x224x224"


@pytest.mark.parametrize(
    "precision, int8_target, fp16, int8",
    [("fp32", None, False, False), ("fp16", None, True, False), ("int8", "tensorrt", False, True)],
)
def test_tensorrt_precision_flags_come_from_the_card_s_target(tmp_path, precision, int8_target, fp16, int8):
    card = ModelCard.for_training("resnet18", ["a", "b"], precision=precision, int8_target=int8_target)
    options = provider_chain("tensorrt", card, trt_cache_dir=tmp_path)[0][1]
    assert (options["trt_fp16_enable"], options["trt_int8_enable"]) == (fp16, int8)
    assert "trt_profile_min_shapes" not in options  # no batch size: no profile


def test_an_int8_cpu_model_is_refused_on_tensorrt_only():
    cpu = ModelCard.for_training("resnet18", ["a", "b"], precision="int8", int8_target="cpu")
    with pytest.raises(InputError, match="--int8-target tensorrt"):
        check_device(cpu, "tensorrt", "m.onnx")
    for device in ("cpu", "cuda", "auto"):
        check_device(cpu, device, "m.onnx")
    legacy = cpu.replace(int8_target=None)  # an int8 card written before the target was recorded
    assert runtime_target(legacy) is TARGETS["int8-cpu"]
    check_device(cpu.replace(int8_target="tensorrt"), "tensorrt", "m.onnx")


@pytest.mark.skipif(gpu_present(), reason="checks the order of checks on a machine without a GPU")
def test_the_target_refusal_comes_before_the_gpu_check(tiny_onnx, tmp_path):
    import onnx
    from skutag.exporter.graph import set_metadata

    path, card = tiny_onnx
    proto = onnx.load(str(path))
    set_metadata(proto, card.replace(precision="int8", int8_target="cpu"))
    relabelled = tmp_path / "int8-cpu.onnx"
    onnx.save(proto, str(relabelled))
    with pytest.raises(InputError, match="--int8-target tensorrt"):
        create_session(relabelled, "tensorrt", trt_cache_dir=tmp_path / "trt")
    assert not (tmp_path / "trt").exists()
    with pytest.raises(DeviceError):  # the same file as fp32: past the card, on to the GPU check
        create_session(path, "tensorrt", trt_cache_dir=tmp_path / "trt")
