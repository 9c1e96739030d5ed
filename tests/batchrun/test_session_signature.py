"""The signature `skutag predict` reads from its ONNX Runtime session (batchrun.predict.from_session) is the
one `onnx` parses from the file (batchrun.predict.signature): card, inputs, outputs and external data;
and a model whose weights live in an external file is refused by predict as by run."""

from __future__ import annotations

import onnx
import pytest
from skutag.batchrun.predict.from_session import external_data, session_signature
from skutag.batchrun.predict.signature import parse_signature

from skutag.runtime import create_session
from tests.support.cli import skutag


@pytest.mark.parametrize("model", ["tiny_model", "embedding_model", "review_model"])
def test_the_session_says_what_the_file_says(request, model):
    path = request.getfixturevalue(model)
    data = path.read_bytes()
    session, _ = create_session(path, "cpu")
    from_session = session_signature(session, data)
    assert from_session == parse_signature(path, data)
    assert from_session.card_json and not from_session.external_data


def test_external_data_is_read_from_the_wire_format(tmp_path, tiny_model):
    proto = onnx.load(str(tiny_model))
    path = tmp_path / "external.onnx"
    onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, size_threshold=0)
    data = path.read_bytes()
    assert external_data(data) and parse_signature(path, data).external_data
    assert not external_data(tiny_model.read_bytes())


def test_predict_refuses_a_model_with_external_data_in_one_line(tmp_path, tiny_model, small_catalog):
    proto = onnx.load(str(tiny_model))
    path = tmp_path / "external.onnx"
    onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, size_threshold=0)
    photo = sorted(p for p in small_catalog.rglob("*") if p.suffix in (".jpg", ".png"))[0]
    result = skutag("predict", path, photo)
    assert result.returncode == 2, result.stderr
    assert "external data" in result.stderr and len(result.stderr.strip().splitlines()) == 1
