"""Predict: top-k, the model input, the device path; and the model's signature, read with onnx once per
file content, then from a cache named by its sha256: the cached contract equals the parsed one, other
bytes at the same path are read afresh, a damaged entry is read again from the model, and a refused
model is refused from the cache too."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from skutag.batchrun.decode.loader import Collate
from skutag.batchrun.predict.infer import host_model_input, topk_host
from skutag.batchrun.predict.model import read_contract
from skutag.batchrun.predict.signature import SIGNATURE_VERSION, cache_dir, read_signature

from skutag.card import METADATA_KEY, ModelCard
from skutag.errors import InputError
from tests.batchrun.support import sample


def _entry(sha256: str):
    return cache_dir() / f"{sha256}.v{SIGNATURE_VERSION}.json"


def test_the_cached_contract_is_the_parsed_one(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("SKUTAG_CACHE_DIR", str(tmp_path / "cache"))
    parsed = read_contract(tiny_model)
    assert _entry(parsed.sha256).is_file()
    cached = read_contract(tiny_model)
    assert cached == parsed
    assert cached.card.to_json() == parsed.card.to_json()


def test_other_bytes_at_the_same_path_are_read_afresh(tmp_path, tiny_model, monkeypatch):
    import onnx

    monkeypatch.setenv("SKUTAG_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "model.onnx"
    path.write_bytes(tiny_model.read_bytes())
    before = read_contract(path)
    proto = onnx.load(str(path))
    card = before.card.replace(classes=("a", "b", "c", "d"))
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = card.to_json()
    onnx.save(proto, str(path))
    after = read_contract(path)
    assert after.sha256 != before.sha256
    assert after.card.classes == ("a", "b", "c", "d")
    assert _entry(before.sha256).is_file() and _entry(after.sha256).is_file()


def test_a_damaged_entry_is_read_again_from_the_model(tmp_path, tiny_model, monkeypatch, caplog):
    monkeypatch.setenv("SKUTAG_CACHE_DIR", str(tmp_path / "cache"))
    good = read_contract(tiny_model)
    _entry(good.sha256).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="skutag.batchrun.predict.signature"):
        again = read_contract(tiny_model)
    assert again == good
    assert "unusable" in caplog.text
    assert read_signature(tiny_model)[1].card_json == good.card.to_json()  # the entry was rewritten


def test_a_refused_model_is_refused_from_the_cache_too(tmp_path, tiny_model, monkeypatch):
    import onnx

    monkeypatch.setenv("SKUTAG_CACHE_DIR", str(tmp_path / "cache"))
    proto = onnx.load(str(tiny_model))
    path = tmp_path / "external.onnx"
    onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, size_threshold=0)
    for _ in range(2):  # parsed, then cached
        with pytest.raises(InputError, match="external data"):
            read_contract(path)


def test_a_broken_card_is_never_cached(tmp_path, tiny_model, monkeypatch):
    import onnx

    monkeypatch.setenv("SKUTAG_CACHE_DIR", str(tmp_path / "cache"))
    proto = onnx.load(str(tiny_model))
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = "{}"
    path = tmp_path / "broken.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(InputError, match="model card"):
        read_contract(path)
    assert not list((tmp_path / "cache").rglob("*.json"))


def test_topk_host_is_sorted_breaks_ties_by_index_and_clips_k():
    scores = np.array([[0.1, 0.4, 0.1, 0.4], [0.7, 0.1, 0.15, 0.05]], np.float32)
    indices, values = topk_host(scores, 3)
    assert indices.tolist() == [[1, 3, 0], [0, 2, 1]] and indices.dtype == np.int32
    np.testing.assert_allclose(values, [[0.4, 0.4, 0.1], [0.7, 0.15, 0.1]])
    random = np.random.default_rng(0).random((50, 30)).astype(np.float32)
    indices, _ = topk_host(random, 5)
    assert indices.tolist() == np.argsort(-random, axis=1, kind="stable")[:, :5].tolist()
    assert topk_host(scores, 10)[0].shape == (2, 4)


def test_host_input_of_a_float_model_is_normalised_nchw():
    card = ModelCard.for_training("x", ["a", "b"], image_size=4)
    contract = type("C", (), {"input_dtype": "float32", "card": card})()
    pixels = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    expected = ((pixels / 255.0 - np.array(card.mean)) / np.array(card.std)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(host_model_input(pixels, contract), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_io_bound_cuda_predictions_equal_the_cpu_ones(tmp_path):
    from skutag.batchrun.predict.infer import make_predictor, open_session
    from skutag.batchrun.predict.model import read_contract
    from skutag.exporter.graph import export_fp32
    from skutag.trainer.model import build_model

    path = tmp_path / "m.onnx"
    export_fp32(
        build_model("resnet18", 4).eval(),
        ModelCard.for_training("resnet18", list("abcd"), image_size=64),
        path,
    )
    contract = read_contract(path)
    batch = Collate(image_size=64, pad_to=8)([sample(i, i != 2, size=64) for i in range(5)])
    results = {}
    for device in ("cpu", "cuda"):
        session, info = open_session(contract, device, batch_size=8)
        predict = make_predictor(session, info, contract, topk=3, embeddings=False, batch_size=8)
        results[device] = predict(batch.pin_memory() if device == "cuda" else batch)
    assert results["cuda"].topk_indices[:5].tolist() == results["cpu"].topk_indices.tolist()
    np.testing.assert_allclose(
        results["cuda"].topk_scores[:5], results["cpu"].topk_scores, rtol=1e-3, atol=1e-4
    )
