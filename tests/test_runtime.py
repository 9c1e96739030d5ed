"""skutag.runtime: the active provider is checked, never assumed; the card comes back out of the file."""

from __future__ import annotations

import pytest

from skutag.card import ModelCard
from skutag.errors import DeviceError, InputError
from skutag.runtime import create_session, gpu_present, provider_chain, session_card


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from exporter.graph import export_fp32
    from trainer.model import build_model

    card = ModelCard.for_training("resnet18", ["a", "b", "c"], image_size=64)
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    export_fp32(build_model("resnet18", 3).eval(), card, path)
    return path, card


def test_cpu_session_and_card_round_trip(tiny_onnx):
    path, card = tiny_onnx
    session, info = create_session(path, "cpu")
    assert info.device == "cpu" and info.providers[0] == "CPUExecutionProvider"
    assert session_card(session) == card


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
    assert provider_chain("cpu") == ["CPUExecutionProvider"]
    cuda = provider_chain("cuda")
    assert cuda[0][0] == "CUDAExecutionProvider" and cuda[0][1]["cudnn_conv_algo_search"] == "HEURISTIC"
    trt = provider_chain(
        "tensorrt", trt_cache_dir=tmp_path, trt_profile=("image", (1, 224, 224, 3), (32, 224, 224, 3))
    )
    name, options = trt[0]
    assert name == "TensorrtExecutionProvider" and options["trt_engine_cache_path"] == str(tmp_path)
    assert options["trt_profile_max_shapes"] == "image:32x224x224x3"
    assert trt[-1] == "CPUExecutionProvider"
