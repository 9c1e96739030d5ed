"""Crash and resume: a training process killed with SIGKILL after its first checkpoint resumes to the same
history an uninterrupted run has (each epoch once), and resuming with a different --epochs/--arch is refused."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from skutag.trainer.config import TrainConfig
from skutag.trainer.train import train

from skutag.errors import SkutagError
from skutag.synth import SynthSpec, make_catalog

OPTIONS = dict(
    arch="resnet18", weights="none", freeze="none", epochs=3, lr=1e-3, batch_size=8, image_size=32,
    augment="standard", workers=0, seed=0,
)  # fmt: skip


def cli_args(data: Path, out: Path) -> list[str]:
    args = [sys.executable, "-m", "skutag", "train", str(data), "--out", str(out)]
    for name, value in OPTIONS.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def history(out: Path) -> list[dict[str, str]]:
    with open(out / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_catalog(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    make_catalog(root, SynthSpec(count=48, classes=3, min_size=48, max_size=64, val_fraction=0.25, seed=2))
    return root


def test_sigkill_after_the_first_checkpoint_then_resume(tiny_catalog, tmp_path):
    out = tmp_path / "killed"
    process = subprocess.Popen(cli_args(tiny_catalog, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "last.ckpt").exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()
    killed_at = torch.load(out / "last.ckpt", weights_only=True)["epoch"]
    assert killed_at < OPTIONS["epochs"], "the run finished before it could be killed"
    assert not (out / "metrics.json").exists()

    resumed = subprocess.run(
        cli_args(tiny_catalog, out) + ["--resume"], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {out} after epoch {killed_at}" in resumed.stderr
    rows = history(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for name in ("best.safetensors", "card.json", "metrics.json", "report/confusion_matrix.csv"):
        assert (out / name).is_file(), name

    # The same run without the crash: same epochs, same losses (CPU, same seed).
    reference = tmp_path / "uninterrupted"
    train(TrainConfig(data=str(tiny_catalog), out=str(reference), **OPTIONS))
    expected = history(reference)
    for got, want in zip(rows, expected, strict=True):
        for column in ("train_loss", "val_loss", "accuracy", "macro_f1"):
            assert float(got[column]) == pytest.approx(float(want[column]), rel=1e-3, abs=1e-5), column

    with pytest.raises(SkutagError, match="cannot resume: --epochs was 3"):
        train(TrainConfig(data=str(tiny_catalog), out=str(out), resume=True, **OPTIONS | {"epochs": 4}))
    with pytest.raises(SkutagError, match="cannot resume: --arch"):
        train(
            TrainConfig(data=str(tiny_catalog), out=str(out), resume=True, **OPTIONS | {"arch": "resnet34"})
        )
    with pytest.raises(SkutagError, match="--resume"):
        train(TrainConfig(data=str(tiny_catalog), out=str(out), **OPTIONS))
