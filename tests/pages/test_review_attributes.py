"""`skutag review` of an OUT whose model has attribute heads: the page shows each head's predicted values
(flagged heads marked), a person's changes are recorded with the decision (`decided_attributes`), and
`skutag train --decisions` trains on them in place of the manifest's values. A real server and a real
headless Chromium, as tests/pages/test_review.py."""

from __future__ import annotations

import csv
import json
import urllib.request
from pathlib import Path

import pytest

from .support import review_server
from .test_review import queue, shown_id, wait_decided, wait_photo

COLOR = {0: "red", 1: "green", 2: "blue", 3: ""}  # as tests/support/attribute_run.py's heads learn them
STYLE = {0: "print", 1: "zip", 2: "print|zip", 3: ""}


@pytest.fixture(scope="module")
def tagged(attribute_run, small_catalog, tmp_path_factory) -> Path:
    """The small catalog tagged by the attribute run's model with a review section that flags every row."""
    import numpy as np
    from skutag.batchrun.api import run_catalog
    from skutag.batchrun.options import RunOptions
    from skutag.exporter.pipeline import ExportRequest, run_export
    from skutag.trainer.weights import load_trained, save_weights

    model, card = load_trained(attribute_run[0])
    means = np.abs(np.random.default_rng(0).standard_normal((len(card.classes), 512)))
    review = {
        "score": "1-max-cosine",
        "class_means": (means / np.linalg.norm(means, axis=1, keepdims=True)).tolist(),
        "ood_threshold": 0.0,  # every row is out of distribution: all in the queue
        "tpr": 0.95,
        "confidence_threshold": 0.3,
    }
    tmp_path = tmp_path_factory.mktemp("attribute-review")
    run = tmp_path / "run"
    run.mkdir()
    save_weights(run / "best.safetensors", model, card.replace(review=review))
    onnx = run_export(ExportRequest(source=run, out=tmp_path / "model.onnx", check=False)).model
    run_catalog(str(onnx), [str(small_catalog)], str(tmp_path / "out"), RunOptions(workers=0))
    return tmp_path / "out"


@pytest.fixture
def out(tagged, tmp_path) -> Path:
    """A copy of the tagged OUT per test (decisions land in it)."""
    import shutil

    shutil.copytree(tagged, tmp_path / "out")
    return tmp_path / "out"


@pytest.mark.browser
def test_attribute_decisions_are_recorded_and_trained_on(out, small_catalog, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.select import Select

    from skutag.decisions import attribute_values

    with review_server(out) as (_process, url), review_browser() as browser:
        pending = queue(url)
        assert [h["name"] for h in pending["heads"]] == ["color", "style"]
        rows = {r["id"]: r for r in pending["rows"]}
        browser.get(url)
        wait_photo(browser)

        first = shown_id(browser)  # a colour set by hand, one style value toggled, then accepted
        color = next(v for v in ("red", "green", "blue") if v != rows[first]["color"])
        Select(browser.find_element("css selector", "select[name='color']")).select_by_value(color)
        browser.find_element("css selector", "input[name='style'][value='print']").click()
        style = sorted(set(rows[first]["style"]) ^ {"print"})
        browser.find_element("id", "accept").click()
        wait_decided(out, 1)

        second = shown_id(browser)  # a label corrected by click: the predicted values are confirmed
        other = next(c for c in pending["classes"] if c != rows[second]["label"])
        browser.find_element("css selector", f"#labels button[data-label='{other}']").click()
        wait_decided(out, 2)

        third = shown_id(browser)
        ActionChains(browser).send_keys("n").perform()  # not a product: no attribute values
        decided = wait_decided(out, 3)

    assert attribute_values(decided[first]["decided_attributes"]) == {
        "color": (color,),
        "style": tuple(style),
    }
    assert decided[first]["decision"] == "accept"
    confirmed = attribute_values(decided[second]["decided_attributes"])
    assert confirmed["color"] == (rows[second]["color"],)
    assert sorted(confirmed["style"]) == sorted(rows[second]["style"])
    assert decided[third]["decided_attributes"] is None

    # the next training: the decided values replace the manifest's for those photos
    from skutag.trainer.attribute_training import AttributeTraining
    from skutag.trainer.config import TrainConfig
    from skutag.trainer.data import decision_samples, find_splits, with_decisions

    manifest = write_manifest(small_catalog, tmp_path / "catalog.csv")
    config = TrainConfig(
        data=str(manifest), out=str(tmp_path / "train"), attributes="color,style", decisions=(str(out),)
    )
    splits = with_decisions(
        find_splits(config.data, val_dir=None, val_split=None, seed=0), decision_samples(config.decisions)
    )
    attrs = AttributeTraining.create(config, splits)
    heads = {h.name: h for h in attrs.heads}
    paths = [s.path for s in splits.train]
    at = paths.index(decided[first]["uri"])
    assert heads["color"].values[attrs.train["color"].targets[at]] == color
    given = attrs.train["style"].targets[at] > 0.5
    assert sorted(v for v, g in zip(heads["style"].values, given, strict=True) if g) == style
    assert decided[third]["uri"] not in paths  # not a product: left out


def review_browser():
    from tests.support.browser import headless_chromium

    return headless_chromium()


def write_manifest(catalog: Path, path: Path) -> Path:
    """The catalog's photos by absolute path, label = folder, colour and style from the class (manifest)."""
    classes = sorted(p.name for p in catalog.iterdir() if p.is_dir())
    rows = []
    for c, name in enumerate(classes):
        for i, photo in enumerate(sorted((catalog / name).iterdir())):
            rows.append([str(photo), name, "val" if i % 4 == 0 else "train", COLOR[c], STYLE[c]])
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "label", "split", "color", "style"], *rows])
    return path


def test_an_attribute_value_the_card_does_not_have_is_refused(out):
    from skutag.decisions import read_decisions

    with review_server(out) as (_process, url):
        row = queue(url)["rows"][0]

        def post(attributes: object) -> int:
            body = {"id": row["id"], "decision": "accept", "label": row["label"], "attributes": attributes}
            request = urllib.request.Request(url + "api/decide", json.dumps(body).encode(), method="POST")
            try:
                with urllib.request.urlopen(request) as answer:
                    return answer.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert post({"color": "purple"}) == 400
        assert post({"style": "print"}) == 400  # a multi-valued head takes a list
        assert post({"pattern": "dots"}) == 400  # no such head
        assert read_decisions(str(out)).num_rows == 0
        assert post({"color": None, "style": ["zip"]}) == 200
        assert json.loads(read_decisions(str(out)).column("decided_attributes")[0].as_py()) == {
            "color": None,
            "style": ["zip"],
        }
