"""skutag synth: deterministic, ImageFolder-shaped, catalog-sized, some transparent PNGs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from skutag.images import load_image
from skutag.synth import SynthSpec, class_styles, make_catalog, render_file
from tests.support.cli import skutag


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_catalog_is_imagefolder_deterministic_and_catalog_sized(tmp_path):
    spec = SynthSpec(count=24, classes=4, min_size=600, max_size=1200, png_fraction=0.3, seed=7)
    summary = make_catalog(tmp_path / "a", spec)
    make_catalog(tmp_path / "b", spec)
    assert summary.images == 24 and len(summary.classes) == 4
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    folders = sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir())
    assert folders == summary.classes
    files = [p for p in (tmp_path / "a").rglob("*") if p.suffix in (".jpg", ".png")]
    assert len(files) == 24
    assert {len(list((tmp_path / "a" / c).iterdir())) for c in folders} == {6}
    pngs = [p for p in files if p.suffix == ".png"]
    assert pngs and len(pngs) < len(files)
    assert all(Image.open(p).mode == "RGBA" for p in pngs)
    for path in files:
        assert 600 <= max(Image.open(path).size) <= 1200
        assert load_image(path).pixels.shape == (224, 224, 3)


def test_other_seed_gives_other_images():
    spec = SynthSpec(count=4, classes=2, min_size=100, max_size=200)
    assert render_file(spec, 1) == render_file(spec, 1)
    assert (
        render_file(spec, 1)[1]
        != render_file(SynthSpec(count=4, classes=2, min_size=100, max_size=200, seed=1), 1)[1]
    )


def test_classes_are_distinct_and_visibly_different():
    styles = class_styles(64)
    assert len({s.name for s in styles}) == 64
    spec = SynthSpec(count=2, classes=2, min_size=256, max_size=256, png_fraction=0.0)
    first, second = (load_image(render_file(spec, i)[1]).pixels.astype(float) for i in range(2))
    assert np.abs(first.mean(axis=(0, 1)) - second.mean(axis=(0, 1))).max() > 5


def test_split_writes_stratified_train_and_val(tmp_path):
    make_catalog(tmp_path, SynthSpec(count=40, classes=4, min_size=64, max_size=96, val_fraction=0.25))
    for split, per_class in (("train", 8), ("val", 2)):
        counts = {len(list(d.iterdir())) for d in (tmp_path / split).iterdir()}
        assert counts == {per_class}


def test_cli_writes_the_catalog(tmp_path):
    result = skutag("synth", tmp_path, "--n", 6, "--classes", 3, "--size", "64-96")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"wrote 6 images in 3 classes to {tmp_path}"]  # no empty first line
    assert len(list(tmp_path.rglob("*.jpg")) + list(tmp_path.rglob("*.png"))) == 6
