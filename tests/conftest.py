"""Shared fixtures: a small synthetic catalog (made once per session) and the GPU marker."""

from __future__ import annotations

from pathlib import Path

import pytest

from skutag.synth import SynthSpec, make_catalog


def pytest_collection_modifyitems(config, items):
    from tests.support.browser import deselect_without_chromium

    deselect_without_chromium(config, items)
    from skutag.runtime import gpu_present

    if gpu_present():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from tests.support.browser import skipped_line

    line = skipped_line(config)
    if line:
        terminalreporter.write_line(line, yellow=True)


@pytest.fixture(scope="session", autouse=True)
def signature_cache(tmp_path_factory):
    """Model signatures (batchrun.predict.signature) cached in this session's temporary directory, not in the
    user's ~/.cache; the CLI subprocesses of the tests inherit it."""
    patch = pytest.MonkeyPatch()
    patch.setenv("SKUTAG_CACHE_DIR", str(tmp_path_factory.mktemp("skutag-cache")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A resnet18 at 32 px with 4 classes (random weights), exported to ONNX with its card: fast to run."""
    import torch
    from skutag.exporter.graph import export_fp32
    from skutag.trainer.model import build_model

    from skutag.card import ModelCard

    torch.manual_seed(0)
    card = ModelCard.for_training("resnet18", ["boot", "cup", "lamp", "sock"], image_size=32)
    path = tmp_path_factory.mktemp("tiny_model") / "tiny.onnx"
    export_fp32(build_model("resnet18", 4).eval(), card, path)
    return path


@pytest.fixture(scope="session")
def embedding_model(tmp_path_factory) -> Path:
    """A resnet18 at 64 px with 4 classes and an `embedding` output (random weights), exported to ONNX."""
    import torch
    from skutag.exporter.graph import export_fp32
    from skutag.trainer.model import build_model

    from skutag.card import ModelCard

    torch.manual_seed(0)
    card = ModelCard.for_training("resnet18", ["boot", "cup", "lamp", "sock"], image_size=64)
    path = tmp_path_factory.mktemp("embedding_model") / "tiny.onnx"
    export_fp32(build_model("resnet18", 4).eval(), card, path, embeddings=True)
    return path


@pytest.fixture(scope="session")
def review_model(tmp_path_factory) -> Path:
    """embedding_model's network with a `review` card section (class means of random non-negative unit
    vectors; thresholds that flag some rows of a random-weights model): runs write the review columns."""
    import numpy as np
    import torch
    from skutag.exporter.graph import export_fp32
    from skutag.trainer.model import build_model

    from skutag.card import ModelCard

    torch.manual_seed(0)
    means = np.abs(np.random.default_rng(0).standard_normal((4, 512)))
    review = {
        "score": "1-max-cosine",
        "class_means": (means / np.linalg.norm(means, axis=1, keepdims=True)).tolist(),
        "ood_threshold": 0.3,
        "tpr": 0.95,
        "confidence_threshold": 0.3,
    }
    card = ModelCard.for_training("resnet18", ["boot", "cup", "lamp", "sock"], image_size=64)
    path = tmp_path_factory.mktemp("review_model") / "review.onnx"
    export_fp32(build_model("resnet18", 4).eval(), card.replace(review=review), path, embeddings=True)
    return path


@pytest.fixture(scope="session")
def small_catalog(tmp_path_factory) -> Path:
    """120 images, 4 classes, 96-160 px (JPEG and some RGBA PNG), one ImageFolder tree."""
    root = tmp_path_factory.mktemp("catalog")
    make_catalog(root, SynthSpec(count=120, classes=4, min_size=96, max_size=160, seed=0))
    return root


@pytest.fixture(scope="session")
def split_catalog(tmp_path_factory) -> Path:
    """160 images, 4 classes, 96-160 px, with train/ and val/ subtrees (25% val)."""
    root = tmp_path_factory.mktemp("split_catalog")
    make_catalog(root, SynthSpec(count=160, classes=4, min_size=96, max_size=160, val_fraction=0.25, seed=1))
    return root


@pytest.fixture(scope="module")
def s3():
    """A real S3-compatible server (moto_server on 127.0.0.1) with a bucket `shop`, one per test module
    (a module may override it); stopped after."""
    from tests.support.s3server import moto_server

    with moto_server() as server:
        server.client().create_bucket(Bucket="shop")
        yield server


@pytest.fixture
def fault_proxy(s3):
    """A `tests.support.faultproxy.FaultProxy` in front of the module's `s3` server, all rules off; stopped after."""
    from tests.support.faultproxy import FaultProxy

    with FaultProxy(s3) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def attribute_run(small_catalog, tmp_path_factory):
    """A run dir whose model has attribute heads (`color` single, `style` multi), saved as the trainer
    saves one (tests/support/attribute_run.py)."""
    from tests.support.attribute_run import make_attribute_run

    return make_attribute_run(small_catalog, tmp_path_factory.mktemp("attribute_run"))
