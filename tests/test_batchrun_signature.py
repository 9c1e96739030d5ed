"""A model's signature is read with onnx once per file content, then from a cache named by its sha256:
the cached contract equals the parsed one, other bytes at the same path are read afresh, a damaged
entry is read again from the model, and a refused model is refused from the cache too.
Also the Arrow builders that keep pandas out of a night with nothing to decode."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from skutag.batchrun import arrow
from skutag.batchrun.predict.model import read_contract
from skutag.batchrun.predict.signature import SIGNATURE_VERSION, cache_dir, read_signature

from skutag.card import METADATA_KEY
from skutag.errors import InputError


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


def test_arrow_builders_equal_pyarrows_own():
    values = ["a", None, "ccc", ""]
    assert arrow.strings(values).equals(pa.array(values, pa.string()))
    numbers = [3, None, -1, 2**40]
    assert arrow.int64s(numbers).equals(pa.array(numbers, pa.int64()))
    assert arrow.int64s([1, 2]).null_count == 0
    flags = np.array([True, False, True] * 5)
    assert arrow.numbers(flags).equals(pa.array(flags))
    assert arrow.numbers(np.arange(5)[::2]).equals(pa.array(np.arange(5)[::2]))
    mask = pa.chunked_array([pa.array([True, None, False]), pa.array([None, True]).slice(1)])
    assert arrow.bools(mask).tolist() == [True, False, False, True]
    assert arrow.scalar(None, pa.bool_()).equals(pa.scalar(None, pa.bool_()))
    assert arrow.scalar("ok", pa.string()).equals(pa.scalar("ok"))


def test_read_parquet_fills_columns_an_older_file_lacks(tmp_path):
    path = tmp_path / "old.parquet"
    pq.write_table(pa.table({"id": ["x", "y"], "bytes": pa.array([1, 2], pa.int32())}), path)
    schema = pa.schema([("id", pa.string()), ("bytes", pa.int64()), ("label", pa.string())])
    table = arrow.read_parquet(path, schema=schema)
    assert table.schema == schema
    assert table.column("label").null_count == 2
    assert table.equals(pq.read_table(path, schema=schema))
