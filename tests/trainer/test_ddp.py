"""`torchrun --nproc_per_node=2 -m skutag train` on the CPU (gloo): both processes train, rank 0 alone writes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

from skutag.synth import SynthSpec, make_catalog


def torchrun() -> list[str]:
    # the interpreter running the tests: a venv's `torchrun` script may name another venv's Python
    return [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.slow  # two training processes on 2 cores (torchrun); rank 1 has aborted at exit under load
def test_torchrun_two_cpu_processes_train_and_rank0_writes_once(tmp_path):
    data = tmp_path / "data"
    make_catalog(data, SynthSpec(count=32, classes=2, min_size=64, max_size=96, val_fraction=0.25, seed=3))
    train_images = sum(1 for p in (data / "train").rglob("*") if p.is_file())
    out = tmp_path / "run"
    command = torchrun() + [
        "--standalone", "--nproc_per_node=2", "-m", "skutag", "train", str(data), "--out", str(out),
        "--arch", "resnet18", "--weights", "none", "--freeze", "none", "--image-size", "32",
        "--epochs", "2", "--batch-size", "8", "--workers", "0", "--device", "cpu",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "DDP rank 0 of 2 (gloo)" in log
    assert log.count("done: best epoch") == 1 and log.count("epoch=2 ") == 1  # rank 0 alone speaks

    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    # The distributed sampler gives each process half the data (padded to equal shares): both trained.
    padded = train_images + train_images % 2
    assert all(int(r["train_images"]) == padded for r in rows)

    # Validation is sharded over both processes and gathered on rank 0: every val image once.
    val_images = sum(1 for p in (data / "val").rglob("*") if p.is_file())
    assert json.loads((out / "metrics.json").read_text())["samples"] == val_images
    state = torch.load(out / "last.ckpt", weights_only=True)
    assert state["epoch"] == 2 and state["options"]["epochs"] == 2
    assert not any(k.startswith("module.") for k in state["model"]), "saved the DDP wrapper, not the model"
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "best.safetensors",
            "card.json",
            "config.json",
            "history.csv",
            "last.ckpt",
            "metrics.json",
            "report",
            "skipped.csv",
        ]
    ), names


@pytest.mark.slow  # two training processes on 2 cores (torchrun)
def test_torchrun_trains_attribute_heads(tmp_path):
    """The same with --attributes: both processes add the heads' loss (DDP sees every head's parameters
    used), validation gathers every head's logits on rank 0, and the run has its heads and their figures."""
    data = tmp_path / "data"
    make_catalog(data, SynthSpec(count=32, classes=2, min_size=64, max_size=96, seed=3))
    rows = []
    for c, folder in enumerate(sorted(p for p in data.iterdir() if p.is_dir())):
        for i, photo in enumerate(sorted(folder.iterdir())):
            color = ("red", "blue")[c] if i % 5 else ""  # some photos without a colour
            rows.append([f"{folder.name}/{photo.name}", folder.name, "val" if i % 4 == 0 else "train", color])
    manifest = data / "catalog.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split", "color"], *rows])
    out = tmp_path / "run"
    command = torchrun() + [
        "--standalone", "--nproc_per_node=2", "-m", "skutag", "train", str(manifest), "--out", str(out),
        "--arch", "resnet18", "--weights", "none", "--freeze", "none", "--image-size", "32",
        "--epochs", "2", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--attributes", "color",
        "--no-gradcam",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DDP rank 0 of 2 (gloo)" in result.stdout + result.stderr
    with open(out / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert all(0 <= float(r["attributes.color.map"]) <= 1 for r in history)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["attributes"]["color"]["images"] + metrics["attributes"]["color"]["missing"]
        == metrics["samples"]
    )
    assert [h["name"] for h in json.loads((out / "card.json").read_text())["attributes"]] == ["color"]
