"""`skutag train` and `skutag eval` check their options and output folder before any work: one line, exit 2."""

from __future__ import annotations

import time

import pytest

from tests.support.cli import skutag

FAST = ["--arch", "resnet18", "--weights", "none", "--image-size", "32", "--workers", "0", "--epochs", "1"]


def test_an_unknown_freeze_stage_is_refused_before_training(split_catalog, tmp_path):
    run = tmp_path / "run"
    result = skutag(
        "train",
        split_catalog,
        "--out",
        run,
        *FAST,
        "--freeze",
        "blocks.5",
        "--epochs",
        "4",
        "--head-epochs",
        "3",
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "--freeze 'blocks.5'" in errors[0] and "Traceback" not in result.stderr
    assert not (run / "best.safetensors").exists() and not (run / "last.ckpt").exists()


def test_an_unknown_arch_is_exit_2_with_a_suggestion(split_catalog, tmp_path):
    result = skutag(
        "train", split_catalog, "--out", tmp_path / "run", "--arch", "resnet51", "--weights", "none"
    )
    assert result.returncode == 2 and "did you mean" in result.stderr and "Traceback" not in result.stderr


def test_training_into_an_existing_run_is_exit_2(split_catalog, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.ckpt").write_bytes(b"")
    result = skutag("train", split_catalog, "--out", run, *FAST)
    assert result.returncode == 2 and "--resume" in result.stderr


@pytest.mark.slow  # six CLI runs that import torch; tests/core/test_fsio.py checks the rule itself
def test_outputs_that_cannot_be_written_are_refused_before_work(tiny_model, split_catalog, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for out in (a_file, a_file / "under", "-"):
        started = time.monotonic()
        result = skutag("eval", tiny_model, split_catalog, "--out", out, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "--out" in result.stderr
        assert time.monotonic() - started < 30
        result = skutag("train", split_catalog, "--out", out, *FAST, cwd=tmp_path)
        assert result.returncode == 2 and "--out" in result.stderr, result.stderr
    assert not (tmp_path / "-").exists()


def test_offline_imagenet_weights_fail_fast_and_point_at_the_offline_backbone(split_catalog, tmp_path):
    import os

    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9")  # a closed port: what no network looks like
    env.pop("HF_HUB_OFFLINE", None)
    started = time.monotonic()
    result = skutag("train", split_catalog, "--out", tmp_path / "run", "--arch", "timm/resnet10t", env=env)
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - started < 30  # 0.3: a minute of hub retries
    assert "127.0.0.1 is not reachable" in result.stderr and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if "WARNING" in line or "Retry" in line]) == 0


def test_the_default_backbone_offline_suggests_the_offline_one():
    from pathlib import Path

    import torch
    from skutag.trainer.model import build_model

    from skutag.errors import InputError

    if (Path(torch.hub.get_dir()) / "checkpoints" / "resnet50-11ad3fa6.pth").exists():
        pytest.skip("ImageNet weights of resnet50 are cached here")
    try:
        build_model("resnet50", 3, "imagenet")
    except InputError as exc:
        assert "--arch timm/tf_efficientnet_lite0" in str(exc) and "install with skutag" in str(exc)
    else:
        pytest.skip("the network is reachable here")
