"""Temperature scaling inside every exported format (issue 29): the graph divides the logits by the card's
temperature before the softmax, so each format gives softmax(logits / T) of the PyTorch model.

ONNX fp32 / fp16 / int8 here; ExecuTorch, LiteRT and OpenVINO (run in their own runtimes) and Core ML
(converted, its card read: its runtime is Apple-only) under `make test-edge`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from skutag.exporter import formats
from skutag.exporter.samples import load_directory, model_input
from skutag.trainer.weights import load_trained, save_weights

from skutag import artifacts
from skutag.card import ModelCard
from tests.exporter.support import invoke, session_card

T = 2.5


@pytest.fixture(scope="module")
def calibrated_run(trained_run, tmp_path_factory) -> tuple[Path, ModelCard]:
    """The shared trained run, its card saying temperature T."""
    source, card = trained_run
    model, _ = load_trained(source)
    card = card.replace(temperature=T)
    run = tmp_path_factory.mktemp("calibrated")
    save_weights(run / "best.safetensors", model.eval(), card)
    card.save(run / "card.json")
    return run, card


def _reference(run: Path, card: ModelCard, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(softmax(logits / T), softmax(logits)) of the PyTorch model on `pixels`."""
    model, _ = load_trained(run)
    with torch.inference_mode():
        logits = model.eval()(torch.from_numpy(model_input(pixels, card, "float"))).double()
    return torch.softmax(logits / T, 1).numpy(), torch.softmax(logits, 1).numpy()


def _export(capsys, run: Path, out: Path, *options: str) -> None:
    code, _, stderr = invoke(capsys, "export", str(run), "--out", str(out), *options)
    assert code == 0, stderr


def _onnx_probs(path: Path, pixels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session_card(session).temperature == T
    return session.run(["probs"], {"image": pixels})[0].astype(np.float64)


def test_onnx_probabilities_are_the_pytorch_models_softmax_of_logits_over_t(
    capsys, calibrated_run, small_catalog, tmp_path
):
    run, card = calibrated_run
    pixels = load_directory(small_catalog, card, 16).pixels
    calibrated, raw = _reference(run, card, pixels)
    assert np.abs(calibrated - raw).max() > 0.05  # T makes a difference these images can show
    _export(capsys, run, tmp_path / "model.onnx", "--check-images", str(small_catalog))
    np.testing.assert_allclose(_onnx_probs(tmp_path / "model.onnx", pixels), calibrated, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_fp16_and_int8_onnx_are_calibrated_too(capsys, calibrated_run, small_catalog, tmp_path, precision):
    run, card = calibrated_run
    pixels = load_directory(small_catalog, card, 16).pixels
    calibrated, raw = _reference(run, card, pixels)
    out = tmp_path / f"model-{precision}.onnx"
    options = ["--calib", str(small_catalog), "--calib-size", "40"] if precision == "int8" else []
    _export(capsys, run, out, "--precision", precision, *options)
    probs = _onnx_probs(out, pixels)
    to_calibrated = 0.5 * np.abs(probs - calibrated).sum(1).mean()
    to_raw = 0.5 * np.abs(probs - raw).sum(1).mean()
    assert to_calibrated < to_raw / 3, (to_calibrated, to_raw)


EDGE = {"executorch": "executorch", "litert": "litert_torch", "openvino": "openvino", "coreml": "coremltools"}


@pytest.mark.edge
@pytest.mark.parametrize("fmt", list(EDGE))
def test_every_edge_format_gives_the_calibrated_probabilities(
    capsys, calibrated_run, small_catalog, tmp_path, fmt
):
    if importlib.util.find_spec(EDGE[fmt]) is None:
        pytest.skip(f"skutag[{fmt}] not installed")
    run, card = calibrated_run
    out = tmp_path / f"model{artifacts.get(fmt).suffix}"
    _export(capsys, run, out, "--format", fmt, "--check-images", str(small_catalog), "--check-size", "16")
    exported_format, exported, _ = formats.verified_card(out)
    assert exported.temperature == T
    if not exported_format.runs_here():  # Core ML off Apple platforms: converted and carded, not run
        return
    pixels = load_directory(small_catalog, card, 16).pixels
    calibrated, raw = _reference(run, card, pixels)
    _, _, runner = formats.load_runner(out)
    probs, _ = formats.run_all(runner, pixels)
    np.testing.assert_allclose(probs, calibrated, atol=2e-3)
    assert np.abs(probs - raw).max() > 0.05
