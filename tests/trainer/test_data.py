"""Trainer building blocks without a training run: data discovery and splits, the dataset's
per-sample status, augmentation presets, the freeze policy, the LR schedule, metrics, checkpoints."""

from __future__ import annotations

import csv
import random
from collections import Counter

import numpy as np
import pytest
import torch
import torchvision
from skutag.trainer import checkpoint, metrics
from skutag.trainer.augment import Normalizer, train_transform
from skutag.trainer.data import CatalogDataset, find_labelled, find_splits, scan_folder
from skutag.trainer.features import FrozenBackboneClassifier, split_head
from skutag.trainer.freeze import apply_freeze, fully_frozen_backbone, set_train_mode
from skutag.trainer.loop import amp_dtype, lr_factor

from skutag.card import ModelCard
from skutag.errors import DeviceError, InputError, SkutagError
from skutag.images import load_image
from tests.support.inputs import write_awkward_inputs

CARD = ModelCard.for_training("resnet18", ["a", "b"], image_size=64)


# -- data ---------------------------------------------------------------------


def test_train_val_folders_give_sorted_classes(split_catalog):
    splits = find_splits(split_catalog, val_dir=None, val_split=None, seed=0)
    assert splits.classes == sorted(splits.classes)
    assert len(splits.train) + len(splits.val) == 160
    assert {s.label for s in splits.val} == set(splits.classes)
    assert all("/val/" in s.path for s in splits.val) and all("/train/" in s.path for s in splits.train)


def test_val_split_is_stratified_and_seeded(small_catalog):
    first = find_splits(small_catalog, val_dir=None, val_split=0.25, seed=3)
    again = find_splits(small_catalog, val_dir=None, val_split=0.25, seed=3)
    other = find_splits(small_catalog, val_dir=None, val_split=0.25, seed=4)
    assert first == again and first.val != other.val
    assert not {s.path for s in first.train} & {s.path for s in first.val}
    per_class = Counter(s.label for s in first.val)
    assert len(per_class) == 4 and max(per_class.values()) - min(per_class.values()) <= 1


def test_val_dir_option_gives_the_same_splits(split_catalog):
    by_option = find_splits(split_catalog / "train", val_dir=split_catalog / "val", val_split=None, seed=0)
    assert by_option == find_splits(split_catalog, val_dir=None, val_split=None, seed=0)
    with pytest.raises(InputError, match="not both"):
        find_splits(split_catalog, val_dir=split_catalog / "val", val_split=0.2, seed=0)


def test_a_single_tree_without_val_split_is_refused(small_catalog):
    with pytest.raises(InputError, match="--val-split"):
        find_splits(small_catalog, val_dir=None, val_split=None, seed=0)


def test_csv_manifest_with_split_column(split_catalog, tmp_path):
    rows = [
        {"path": str(p.relative_to(split_catalog)), "label": p.parent.name, "split": p.parent.parent.name}
        for p in sorted(split_catalog.rglob("*.*"))
        if p.suffix in (".jpg", ".png")
    ]
    manifest = split_catalog / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    try:
        from_manifest = find_splits(manifest, val_dir=None, val_split=None, seed=0)
        from_folders = find_splits(split_catalog, val_dir=None, val_split=None, seed=0)
        assert sorted(from_manifest.val) == sorted(from_folders.val)
        assert from_manifest.classes == from_folders.classes
        assert sorted(find_labelled(manifest)) == sorted(from_folders.val)
    finally:
        manifest.unlink()


def test_parquet_manifest_without_split_uses_val_split(small_catalog, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    samples = scan_folder(small_catalog)
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({"path": [s.path for s in samples], "label": [s.label for s in samples]}), manifest
    )
    splits = find_splits(manifest, val_dir=None, val_split=0.5, seed=0)
    assert len(splits.val) == len(samples) // 2
    with pytest.raises(InputError, match="path,label"):
        bad = tmp_path / "bad.csv"
        bad.write_text("file,class\nx.jpg,a\n")
        find_splits(bad, val_dir=None, val_split=0.5, seed=0)


def _products_tree(root):
    """4 classes x 6 products x 3 photos named PRODUCT-VIEW.jpg (tiny real JPEGs)."""
    from PIL import Image

    for c in "abcd":
        (root / c).mkdir(parents=True)
        for p in range(6):
            for v in range(3):
                Image.new("RGB", (8, 8), (40 * p, 10, 10)).save(root / c / f"{c}{p}-{v}.jpg")
    return root


def test_split_by_keeps_every_product_on_one_side(tmp_path):
    tree = _products_tree(tmp_path / "tree")
    product = lambda s: s.path.rsplit("/", 1)[-1].split("-")[0]  # noqa: E731
    by_photo = find_splits(tree, val_dir=None, val_split=0.25, seed=0)
    assert {product(s) for s in by_photo.train} & {product(s) for s in by_photo.val}  # the leak it fixes
    splits = find_splits(tree, val_dir=None, val_split=0.25, seed=0, split_by="prefix:-")
    assert not {product(s) for s in splits.train} & {product(s) for s in splits.val}
    assert len(splits.train) + len(splits.val) == 72 and {s.label for s in splits.val} == set("abcd")
    assert splits == find_splits(tree, val_dir=None, val_split=0.25, seed=0, split_by="prefix:-")
    # the same from a manifest column
    manifest = tmp_path / "m.csv"
    rows = [f"{s.path},{s.label},{product(s)}" for s in splits.train + splits.val]
    manifest.write_text("path,label,sku\n" + "\n".join(rows) + "\n")
    by_column = find_splits(manifest, val_dir=None, val_split=0.25, seed=0, split_by="sku")
    assert not {product(s) for s in by_column.train} & {product(s) for s in by_column.val}
    with pytest.raises(InputError, match="no such column"):
        find_splits(manifest, val_dir=None, val_split=0.25, seed=0, split_by="product")
    with pytest.raises(InputError, match="needs a manifest"):
        find_splits(tree, val_dir=None, val_split=0.25, seed=0, split_by="sku")
    with pytest.raises(InputError, match="--val-split"):
        find_splits(tree, val_dir=None, val_split=None, seed=0, split_by="prefix:-")
    with pytest.raises(SkutagError, match="cannot resume: --split-by"):
        checkpoint.check_resumable({"epochs": 3, "arch": "x"}, {"epochs": 3, "arch": "x", "split_by": "sku"})


def test_dataset_reports_bad_files_and_eval_pixels_are_batchrun_pixels(tmp_path, small_catalog):
    expected = write_awkward_inputs(tmp_path / "zoo" / "a")
    samples = scan_folder(tmp_path / "zoo")
    dataset = CatalogDataset(samples, {"a": 0}, CARD)
    for i, sample in enumerate(samples):
        item = dataset[i]
        kind = expected[sample.path.rsplit("/", 1)[-1]]
        assert item["ok"] == (kind is None)
        assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.uint8
        if kind is not None:
            assert item["error"].startswith(kind)
    good = scan_folder(small_catalog)[0]
    item = CatalogDataset([good], {good.label: 0}, CARD)[0]
    reference = load_image(good.path, resize_size=CARD.resize_size, image_size=CARD.image_size).pixels
    assert torch.equal(item["image"].permute(1, 2, 0), torch.from_numpy(reference.copy()))


def test_training_pixels_are_resized_then_cropped_by_the_preset(small_catalog):
    sample = scan_folder(small_catalog)[1]
    item = CatalogDataset([sample], {sample.label: 0}, CARD, train_transform("standard", 64))[0]
    assert item["image"].shape == (3, 64, 64) and item["ok"]
    assert train_transform("none", 64) is None  # augment none: the exact eval pixels above


@pytest.mark.parametrize("preset", ["standard", "strong"])
def test_augment_presets_give_image_size_and_vary(preset):
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 73, 90), dtype=torch.uint8)
    transform = train_transform(preset, 64)
    outputs = [transform(image) for _ in range(4)]
    assert all(o.shape == (3, 64, 64) for o in outputs)
    assert not all(torch.equal(outputs[0], o) for o in outputs[1:])
    normalised = Normalizer(ModelCard.for_training("x", ["a", "b"], normalize="symmetric"))(outputs[0][None])
    assert normalised.min() >= -1.0 - 1e-6 and normalised.max() <= 1.0 + 1e-6


# -- freeze policy and the frozen-backbone path -----------------------------------


def test_freeze_backbone_trains_only_the_head_and_keeps_bn_statistics():
    model = torchvision.models.resnet18(num_classes=3)
    summary = apply_freeze(model, "backbone")
    assert summary.trainable == 512 * 3 + 3 and fully_frozen_backbone(model)
    set_train_mode(model)
    assert not model.bn1.training and not model.layer4[1].bn2.training and model.fc.training
    before = model.bn1.running_mean.clone()
    FrozenBackboneClassifier(model)(torch.randn(2, 3, 32, 32))
    assert torch.equal(before, model.bn1.running_mean)


def test_freeze_stage_trains_from_that_stage_on():
    model = torchvision.models.resnet18(num_classes=3)
    apply_freeze(model, "layer4")
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer4", "fc"} and not fully_frozen_backbone(model)
    with pytest.raises(SkutagError, match="layer4"):
        apply_freeze(model, "layer9")


def test_frozen_backbone_classifier_matches_the_model_and_differentiates_only_the_head():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    apply_freeze(model, "backbone")
    x = torch.randn(2, 3, 32, 32)
    wrapped = FrozenBackboneClassifier(model).eval()
    assert torch.allclose(wrapped(x), model(x), atol=1e-6)
    wrapped(x).sum().backward()
    assert model.fc.weight.grad is not None and model.conv1.weight.grad is None
    body, head = split_head(model)
    assert head is model.fc and isinstance(model.fc, torch.nn.Linear)  # the original keeps its head
    assert body(x).shape == (2, 512)


# -- optimisation, device, metrics, checkpoint -------------------------------------


def test_lr_warms_up_then_decays_by_cosine():
    factors = [lr_factor(s, total_steps=100, warmup_steps=10, schedule="cosine") for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:], strict=False))
    assert factors[-1] < 0.01
    assert lr_factor(50, total_steps=100, warmup_steps=0, schedule="constant") == 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure without CUDA")
def test_cuda_requested_without_cuda_fails_loudly():
    from skutag.trainer.distributed import resolve_device

    with pytest.raises(DeviceError, match="--device cuda"):
        resolve_device("cuda")
    assert resolve_device("auto")[0].type == "cpu"
    with pytest.raises(SkutagError, match="--amp"):
        amp_dtype("bf16", torch.device("cpu"))
    assert amp_dtype("auto", torch.device("cpu")) is None


def test_summary_metrics_agree_with_the_confusion_matrix():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 200)
    probs = rng.dirichlet(np.ones(6), 200)
    probs[np.arange(100), labels[:100]] += 2  # half right
    probs /= probs.sum(axis=1, keepdims=True)
    figures = metrics.summary_metrics(labels, probs)
    counts = metrics.confusion(labels, probs, 6)
    assert figures["accuracy"] == pytest.approx(np.trace(counts) / counts.sum())
    table = metrics.per_class_table(labels, probs, list("abcdef"))
    assert [r["support"] for r in table] == counts.sum(axis=1).tolist()
    assert figures["macro_f1"] == pytest.approx(np.mean([r["f1"] for r in table]))
    assert figures["top5_accuracy"] >= figures["accuracy"]


def test_checkpoint_is_plain_data_and_restores_every_rng(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    model = torchvision.models.resnet18(num_classes=2)
    optimizer = torch.optim.Adam(model.parameters())
    checkpoint.save_checkpoint(
        tmp_path / "last.ckpt", {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    )
    expected = (torch.rand(3), np.random.rand(3), random.random())
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    checkpoint.restore_rng(saved["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
    with pytest.raises(SkutagError, match="--epochs"):
        checkpoint.check_resumable({"epochs": 3, "arch": "resnet18"}, {"epochs": 4, "arch": "resnet18"})


def test_weights_path_loads_the_backbone_and_refuses_another_architecture(tmp_path):
    from skutag.trainer.model import build_model

    source = torchvision.models.resnet18(num_classes=10)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = build_model("resnet18", 3, str(tmp_path / "r18.pth"))
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert model.fc.out_features == 3  # the head of another class count is left new
    with pytest.raises(InputError, match="do not fit"):
        build_model("resnet50", 3, str(tmp_path / "r18.pth"))
