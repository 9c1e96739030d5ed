"""`skutag train` (the CLI, in a subprocess) on the inputs of issue 9: a non-UTF-8 filename, a symlink
loop, an AppleDouble file, an AVIF, a HEIC and an oversize file in the class folders. Training
succeeds, the hidden file is skipped and counted, the loop adds nothing, AVIF and HEIC are trained
on, and the oversize file is listed in skipped.csv from its size alone."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skutag.formats import avif_available
from skutag.images import DEFAULT_MAX_BYTES
from tests.support.cli import skutag
from tests.support.inputs import avif_bytes, encode, heic_bytes, smooth_image

GOOD_PER_CLASS = 6


def good_jpeg(label: int, i: int) -> bytes:
    rng = np.random.default_rng(100 * label + i)
    pixels = np.full((48, 56, 3), (200, 40, 40) if label == 0 else (40, 40, 200), dtype=np.int16)
    pixels += rng.integers(-30, 30, pixels.shape)
    return encode(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), "JPEG", quality=90)


def hostile_tree(root: Path) -> dict[str, int]:
    """Two classes of good JPEGs plus the hostile files; returns what the listing must yield."""
    for label, name in enumerate(("boot", "cup")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(GOOD_PER_CLASS):
            (folder / f"{i:02d}.jpg").write_bytes(good_jpeg(label, i))
    boot, cup = root / "boot", root / "cup"
    with open(os.path.join(os.fsencode(boot), b"caf\xe9.jpg"), "wb") as f:  # latin-1 name from an SMB share
        f.write(good_jpeg(0, 99))
    (boot / "._00.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")  # AppleDouble
    (boot / "loop").symlink_to("..")  # boot/loop -> the data root: must not be walked again
    (boot / "photo.avif").write_bytes(avif_bytes(smooth_image(64, 48)))
    (cup / "phone.heic").write_bytes(heic_bytes(smooth_image(64, 48)))
    with open(cup / "huge.jpg", "wb") as f:
        f.truncate(DEFAULT_MAX_BYTES + 1)  # sparse: refused from its size, never read
    return {"images": 2 * GOOD_PER_CLASS + 4, "hidden": 1}


@pytest.mark.skipif(not avif_available(), reason="this Pillow has no AVIF support")
def test_train_survives_and_uses_the_hostile_inputs(tmp_path):
    data = tmp_path / "data"
    expected = hostile_tree(data)
    out = tmp_path / "run"
    result = skutag(
        "train", data, "--out", out, "--arch", "resnet18", "--weights", "none", "--freeze", "none",
        "--epochs", "1", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--augment", "none",
        "--val-split", "0.5", "--lr", "1e-3",
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    counts = re.search(r"data: (\d+) train / (\d+) val images, 2 classes", result.stderr)
    assert counts, result.stderr[-2000:]
    assert int(counts[1]) + int(counts[2]) == expected["images"]  # the loop multiplied nothing
    assert f"{expected['hidden']} hidden file(s)" in result.stderr
    assert "reached again through a symlink" in result.stderr

    with open(out / "skipped.csv", newline="", encoding="utf-8") as f:  # strict UTF-8
        skipped = {row["path"]: row["error"] for row in csv.DictReader(f)}
    assert list(skipped) == [str(data / "cup" / "huge.jpg")], skipped
    assert skipped[str(data / "cup" / "huge.jpg")].startswith("too_large")
    for name in ("per_class.csv", "misclassified.csv", "skipped.csv"):
        (out / "report" / name).read_text(encoding="utf-8")  # every path written is valid UTF-8


def test_scan_folder_lists_the_hostile_tree_once(tmp_path):
    """The same tree through the trainer's lister directly: uris, labels, counts."""
    from skutag.trainer.data import CatalogDataset, scan_folder

    from skutag.listing import ListingCounts, local_path

    expected = hostile_tree(tmp_path / "data")
    counts = ListingCounts()
    samples = scan_folder(tmp_path / "data", counts)
    assert len(samples) == expected["images"] and counts.hidden == expected["hidden"]
    assert counts.revisited_dirs == 1
    assert not any("._" in s.path or "/loop/" in s.path for s in samples)
    names = {os.path.basename(local_path(s.path)): s.label for s in samples}
    assert names[b"caf\xe9.jpg"] == "boot" and names["phone.heic"] == "cup" and names["photo.avif"] == "boot"
    for sample in samples:
        sample.path.encode("utf-8")
    from skutag.card import ModelCard

    card = ModelCard.for_training("resnet18", ["boot", "cup"], image_size=32)
    dataset = CatalogDataset(samples, {"boot": 0, "cup": 1}, card)
    status = {os.path.basename(local_path(s.path)): dataset[i] for i, s in enumerate(samples)}
    assert status[b"caf\xe9.jpg"]["ok"] and status["phone.heic"]["ok"] and status["photo.avif"]["ok"]
    assert not status["huge.jpg"]["ok"] and status["huge.jpg"]["error"].startswith("too_large")
