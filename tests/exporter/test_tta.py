"""`skutag export --tta flip`: the image and its mirror averaged inside the graph, in every ONNX precision.

The PyTorch wrapper averages the two views' probabilities and keeps the image's own embedding;
fp32, fp16 and int8 ONNX files hold it (the card and the report say so, the parity gate compares
them with the wrapped PyTorch model), so a mirrored photo gets the same probabilities as the
photo; int8 keeps the averaging in its float tail. Edge formats: tests/exporter/test_edge_export.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from skutag.exporter import quantize
from skutag.exporter.graph import EMBEDDING, INPUT_NAME, PROBS, ExportModule
from skutag.exporter.samples import load_directory
from skutag.exporter.tta import FlipTTA, wrap
from skutag.trainer.weights import load_trained

from skutag.card import CardError, ModelCard
from skutag.runtime import create_session
from tests.exporter.support import invoke

CALIB_SIZE = 40


@pytest.fixture(scope="module")
def pixels(small_catalog, trained_run) -> np.ndarray:
    _, card = trained_run
    return load_directory(small_catalog, card, 12).pixels


def test_the_wrapper_averages_the_two_views_and_keeps_the_image_embedding(trained_run, pixels):
    run, _ = trained_run
    model, card = load_trained(run)
    plain = ExportModule(model, card, embeddings=True).eval()
    x = torch.from_numpy(pixels)
    with torch.inference_mode():
        probs, embedding = wrap(plain, "flip")(x)
        straight, straight_embedding = plain(x)
        mirrored, _ = plain(x.flip(2))
    torch.testing.assert_close(probs, (straight + mirrored) / 2)
    torch.testing.assert_close(embedding, straight_embedding)
    assert (straight - mirrored).abs().max() > 1e-3, "the fixture model must not be mirror-invariant already"
    assert wrap(plain, "none") is plain


@pytest.fixture(scope="module")
def tta_exports(trained_run, small_catalog, tmp_path_factory) -> dict[str, Path]:
    """fp32, fp16 and int8 (cpu) ONNX files with --tta flip, written by the pipeline (parity-checked)."""
    from skutag.exporter.pipeline import ExportRequest, run_export

    run, _ = trained_run
    work = tmp_path_factory.mktemp("tta")
    paths = {}
    for precision in ("fp32", "fp16", "int8"):
        request = ExportRequest(
            source=run,
            out=work / f"{precision}.onnx",
            precision=precision,
            embeddings=True,
            calib_dir=small_catalog,
            calib_size=CALIB_SIZE,
            tta="flip",
        )
        paths[precision] = run_export(request).model
    return paths


def outputs(path: Path, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session, _ = create_session(path, "cpu")
    probs, embedding = session.run([PROBS, EMBEDDING], {INPUT_NAME: pixels})
    return probs, embedding


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_onnx_precision_gives_a_mirrored_photo_the_photos_probabilities(tta_exports, pixels, precision):
    path = tta_exports[precision]
    probs, _ = outputs(path, pixels)
    mirrored, _ = outputs(path, np.ascontiguousarray(pixels[:, :, ::-1]))
    np.testing.assert_allclose(mirrored, probs, atol=1e-5)
    card = ModelCard.from_json({p.key: p.value for p in onnx.load(str(path)).metadata_props}["skutag.card"])
    report = json.loads(path.with_name(path.name + ".json").read_text())
    assert card.tta == "flip" and report["card"]["tta"] == "flip" and report["tta"] == "flip"
    assert report["parity"]["top1_agreement"] >= 0.95  # gated against the wrapped PyTorch model


def test_the_onnx_file_matches_the_wrapped_pytorch_model(tta_exports, trained_run, pixels):
    run, _ = trained_run
    model, card = load_trained(run)
    wrapped = FlipTTA(ExportModule(model, card, embeddings=True).eval())
    with torch.inference_mode():
        reference, reference_embedding = wrapped(torch.from_numpy(pixels))
    probs, embedding = outputs(tta_exports["fp32"], pixels)
    np.testing.assert_allclose(probs, reference.numpy(), atol=1e-4)
    np.testing.assert_allclose(embedding, reference_embedding.numpy(), rtol=1e-4, atol=1e-4)


def test_the_cast_stays_the_first_node_on_the_uint8_input(tta_exports):
    for path in tta_exports.values():
        proto = onnx.load(str(path))
        readers = [node.op_type for node in proto.graph.node if INPUT_NAME in node.input]
        assert readers == ["Cast"], (path.name, readers)


def test_int8_keeps_the_averaging_float(tta_exports):
    proto = onnx.load(str(tta_exports["int8"]))
    assert quantize.eight_bit_tail(proto) == []
    assert {"Softmax", "Add", "Mul"} <= {node.op_type for node in quantize.tail_nodes(proto)}


def test_without_tta_the_card_has_no_tta_key_and_a_bad_mode_is_refused(trained_run, capsys, tmp_path):
    _, card = trained_run
    assert "tta" not in card.to_dict()
    with pytest.raises(CardError, match="tta"):
        card.replace(tta="rotate")
    code, _, stderr = invoke(
        capsys, "export", str(trained_run[0]), "--out", str(tmp_path / "m.onnx"), "--tta", "x"
    )
    assert code == 2 and "--tta" in stderr and not (tmp_path / "m.onnx").exists()


def test_attribute_heads_are_averaged_too(attribute_run, small_catalog, tmp_path):
    """A model with attribute heads: `attr.<name>` is the mean of the two views' head outputs, in ONNX."""
    from skutag.exporter.pipeline import ExportRequest, run_export

    run, _ = attribute_run
    out = tmp_path / "attr-tta.onnx"
    run_export(ExportRequest(source=run, out=out, embeddings=True, tta="flip"))
    model, card = load_trained(run)
    plain = ExportModule(model, card, embeddings=True).eval()
    pixels = load_directory(small_catalog, card, 8).pixels
    with torch.inference_mode():
        straight = plain(torch.from_numpy(pixels))
        mirrored = plain(torch.from_numpy(np.ascontiguousarray(pixels[:, :, ::-1])))
    session, _ = create_session(out, "cpu")
    names = [o.name for o in session.get_outputs()]
    exported = dict(zip(names, session.run(None, {INPUT_NAME: pixels}), strict=True))
    assert names == [PROBS, EMBEDDING, *(h.output for h in card.attributes)]
    for i, name in enumerate(names):
        expected = straight[i] if name == EMBEDDING else (straight[i] + mirrored[i]) / 2
        np.testing.assert_allclose(exported[name], expected.numpy(), atol=1e-4, rtol=1e-4)
