"""Training runs end to end: it learns, the run dir holds what docs/design.md says, the report agrees with itself,
bad files are skipped and listed, and the options that cannot work fail with one clear sentence."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file
from skutag.trainer.config import TrainConfig
from skutag.trainer.train import train
from skutag.trainer.weights import read_card

from skutag.card import ModelCard
from skutag.errors import InputError, SkutagError
from skutag.synth import SynthSpec, make_catalog

FAST = dict(arch="resnet18", weights="none", image_size=64, batch_size=16, workers=0, seed=0)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def scratch_run(split_catalog, tmp_path_factory) -> Path:
    """resnet18 from random weights, everything trained, 3 epochs at 64 px on 4 classes."""
    out = tmp_path_factory.mktemp("scratch") / "run"
    train(TrainConfig(data=str(split_catalog), out=str(out), freeze="none", epochs=3, lr=1e-3, **FAST))
    return out


def test_resnet18_from_scratch_learns_the_catalog(scratch_run):
    history = read_csv(scratch_run / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert float(history[-1]["train_loss"]) < float(history[0]["train_loss"])
    final = json.loads((scratch_run / "metrics.json").read_text())
    assert final["accuracy"] >= 0.85, final  # chance is 0.25
    best = max(history, key=lambda r: float(r["macro_f1"]))
    assert final["best_epoch"] == int(best["epoch"])
    assert final["macro_f1"] == pytest.approx(float(best["macro_f1"]), abs=1e-6)


def test_metrics_json_agrees_with_the_confusion_matrix_and_misclassified_csv(scratch_run):
    final = json.loads((scratch_run / "metrics.json").read_text())
    report = scratch_run / "report"
    matrix = [
        [int(v) for k, v in row.items() if k != "true\\predicted"]
        for row in read_csv(report / "confusion_matrix.csv")
    ]
    total = sum(map(sum, matrix))
    correct = sum(matrix[i][i] for i in range(len(matrix)))
    wrong = read_csv(report / "misclassified.csv")
    assert total == final["samples"] == 40
    assert correct / total == pytest.approx(final["accuracy"])
    assert len(wrong) == total - correct == final["misclassified"]
    per_class = read_csv(report / "per_class.csv")
    assert [int(r["support"]) for r in per_class] == [sum(row) for row in matrix]
    for row in wrong:
        assert row["true_label"] != row["predicted_label"]
        assert row["top3"].split(";")[0].split(":")[0] == row["predicted_label"]
    roc = json.loads((report / "roc.json").read_text())
    assert final["macro_auc"] == pytest.approx(roc["macro_auc"])
    for name in ("confusion_matrix.png", "roc.png", "misclassified.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_dir_contract(scratch_run, split_catalog):
    classes = sorted(p.name for p in (split_catalog / "train").iterdir())
    card = read_card(scratch_run / "best.safetensors")
    assert list(card.classes) == classes
    assert (card.image_size, card.resize_size) == (64, 73) and card.normalize == "imagenet"
    assert card.metrics["macro_f1"] > 0 and card.provenance["options"]["freeze"] == "none"
    assert ModelCard.load(scratch_run / "card.json").classes == card.classes
    model = torchvision.models.get_model("resnet18", num_classes=len(classes))
    model.load_state_dict(load_file(scratch_run / "best.safetensors"), strict=True)
    state = torch.load(scratch_run / "last.ckpt", weights_only=True)
    assert state["epoch"] == 3 and len(state["history"]) == 3
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "options"} <= set(state)
    assert json.loads((scratch_run / "config.json").read_text())["epochs"] == 3
    assert not list(scratch_run.rglob(".*.tmp")), "a temporary file was left behind"


def test_bad_files_are_skipped_and_listed(tmp_path):
    data = tmp_path / "data"
    make_catalog(data, SynthSpec(count=24, classes=2, min_size=48, max_size=64, val_fraction=0.25, seed=5))
    bad_train = data / "train" / sorted(p.name for p in (data / "train").iterdir())[0] / "broken.jpg"
    bad_val = data / "val" / sorted(p.name for p in (data / "val").iterdir())[0] / "empty.png"
    bad_train.write_bytes(b"not a jpeg at all")
    bad_val.write_bytes(b"")
    out = tmp_path / "run"
    train(TrainConfig(data=str(data), out=str(out), epochs=1, **FAST | {"image_size": 32}))
    skipped = {r["path"]: r["error"] for r in read_csv(out / "skipped.csv")}
    assert skipped.keys() == {str(bad_train), str(bad_val)}
    assert skipped[str(bad_train)].startswith("not_image") and skipped[str(bad_val)].startswith("empty")
    assert [r["path"] for r in read_csv(out / "report" / "skipped.csv")] == [str(bad_val)]
    val_files = [p for p in (data / "val").rglob("*") if p.is_file()]
    assert json.loads((out / "metrics.json").read_text())["samples"] == len(val_files) - 1


@pytest.fixture(scope="module")
def tiny_catalog(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    make_catalog(root, SynthSpec(count=32, classes=4, min_size=48, max_size=64, val_fraction=0.25, seed=4))
    return root


def test_early_stopping_stops_when_the_metric_stops_improving(tiny_catalog, tmp_path):
    out = tmp_path / "run"
    # With 4 classes top-5 accuracy is always 1.0: it never improves after epoch 1.
    config = dict(augment="none", cache_features=True, epochs=10, patience=2, best_metric="top5_accuracy")
    train(TrainConfig(data=str(tiny_catalog), out=str(out), **FAST | config | {"image_size": 32}))
    assert [int(r["epoch"]) for r in read_csv(out / "history.csv")] == [1, 2, 3]
    assert json.loads((out / "metrics.json").read_text())["best_epoch"] == 1


def test_the_other_recipes_run_end_to_end(tiny_catalog, tmp_path, capsys):
    out = tmp_path / "run"
    recipe = dict(
        freeze="layer4", unfreeze_at=2, augment="strong", normalize="symmetric", optimizer="sgd", lr=1e-2,
        warmup_epochs=1, clip_grad=1.0, label_smoothing=0.1, balance="sampler", epochs=2, workers=1,
    )  # fmt: skip
    train(TrainConfig(data=str(tiny_catalog), out=str(out), **FAST | recipe | {"image_size": 32}))
    log = capsys.readouterr().err
    assert "epoch 1: --freeze layer4" in log and "epoch 2: --freeze none" in log
    assert len(read_csv(out / "history.csv")) == 2
    card = read_card(out / "best.safetensors")
    assert card.normalize == "symmetric" and card.mean == (0.5, 0.5, 0.5)
    assert card.provenance["options"]["balance"] == "sampler"


def test_all_files_failing_is_an_input_error(tmp_path):
    for label in ("a", "b"):
        for i in range(2):
            path = tmp_path / "data" / label / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"garbage")
    with pytest.raises(InputError, match="none of the 2 images could be loaded"):
        train(
            TrainConfig(
                data=str(tmp_path / "data"), out=str(tmp_path / "run"), val_split=0.5, epochs=1, **FAST
            )
        )


def test_impossible_option_combinations_are_refused(small_catalog, tmp_path):
    base = dict(data=str(small_catalog), out=str(tmp_path / "run"), val_split=0.25, **FAST)
    with pytest.raises(SkutagError, match="--augment none"):
        train(TrainConfig(cache_features=True, augment="standard", **base))
    with pytest.raises(SkutagError, match="--freeze backbone"):
        train(TrainConfig(cache_features=True, augment="none", freeze="none", **base))
    assert not (tmp_path / "run").exists()


def test_imagenet_weights_offline_fail_in_one_sentence(capsys):
    from skutag.trainer.model import build_model

    cached = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    if cached.exists():
        pytest.skip("ImageNet weights are cached here")
    try:
        build_model("resnet18", 3, "imagenet")
    except SkutagError as exc:
        message = str(exc)
    else:
        pytest.skip("the network is reachable here")
    assert "--weights none or --weights PATH" in message and "\n" not in message
    assert capsys.readouterr().out == ""  # torch.hub's "Downloading ..." line is not shown


@pytest.mark.slow
def test_resnet18_reaches_high_accuracy_at_128px(tmp_path):
    data = tmp_path / "data"
    make_catalog(data, SynthSpec(count=320, classes=8, min_size=140, max_size=220, val_fraction=0.25, seed=7))
    out = tmp_path / "run"
    train(
        TrainConfig(
            data=str(data),
            out=str(out),
            freeze="none",
            epochs=4,
            lr=1e-3,
            **FAST | {"image_size": 128, "workers": 1},
        )
    )
    final = json.loads((out / "metrics.json").read_text())
    assert final["accuracy"] >= 0.9, final  # chance is 0.125


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["auto", "fp16"])
def test_short_cuda_run_with_mixed_precision(tiny_catalog, tmp_path, amp, capsys):
    out = tmp_path / "run"
    train(
        TrainConfig(
            data=str(tiny_catalog), out=str(out), device="cuda", amp=amp, freeze="none", epochs=2, **FAST
        )
    )
    log = capsys.readouterr().err
    expected = (
        "torch.float16"
        if amp == "fp16"
        else ("torch.bfloat16" if torch.cuda.is_bf16_supported() else "torch.float16")
    )
    assert f"mixed precision: {expected}, channels-last: True" in log
    rows = read_csv(out / "history.csv")
    assert len(rows) == 2 and all(float(r["images_per_s"]) > 0 and float(r["train_loss"]) > 0 for r in rows)
    model = torchvision.models.get_model("resnet18", num_classes=4)
    model.load_state_dict(load_file(out / "best.safetensors"), strict=True)
