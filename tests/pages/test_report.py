"""`skutag report`: the figures (checked against DuckDB over the committed rows), the static page in a real
headless Chromium (counts, label changes and thumbnails rendered from a file), and an s3:// OUT."""

from __future__ import annotations

import json
import shutil

import duckdb
import pytest
from PIL import Image

from tests.support.browser import headless_chromium
from tests.support.cli import skutag

from .support import SCREENSHOTS


@pytest.fixture(scope="module")
def reported(nights, tmp_path_factory):
    before, tonight = nights
    out = tmp_path_factory.mktemp("reported") / "tonight"
    shutil.copytree(tonight, out)
    result = skutag("report", out, "--since", before)
    assert result.returncode == 0, result.stderr
    assert "-> " in result.stderr and "label changes" in result.stderr
    return before, out


def test_the_report_counts_what_duckdb_counts(reported):
    before, out = reported
    report = json.loads((out / "_report" / "report.json").read_text())
    rows = duckdb.sql(
        f"SELECT count(*), count(*) FILTER (status = 'ok') FROM '{out}/part-*.parquet'"
    ).fetchall()[0]
    assert (report["counts"]["rows"], report["counts"]["ok"]) == rows
    changed = duckdb.sql(
        f"SELECT a.label AS f, b.label AS t, count(*) AS n FROM '{before}/part-*.parquet' a "
        f"JOIN '{out}/part-*.parquet' b USING (id) WHERE a.label <> b.label GROUP BY 1, 2"
    ).fetchall()
    assert changed, "the two models should disagree somewhere"
    assert {(c["from"], c["to"], c["rows"]) for c in report["changes"]} == set(changed)
    flagged = duckdb.sql(f"SELECT count(*) FROM '{out}/part-*.parquet' WHERE review").fetchall()[0][0]
    assert report["review"]["rows"] == flagged
    assert report["card"]["classes"] and report["card"]["model_sha256"]
    shares = duckdb.sql(f"SELECT label, count(*) FROM '{out}/part-*.parquet' GROUP BY 1").fetchall()
    assert {label: n for label, n in shares} == {k: v["rows"] for k, v in report["labels"].items()}


def test_thumbnails_are_small_and_bounded(reported, nights, tmp_path):
    _, out = reported
    report = json.loads((out / "_report" / "report.json").read_text())
    thumbs = [row["thumb"] for row in report["rows"].values() if row.get("thumb")]
    assert thumbs and report["thumbs"]["failed"] == 0
    for name in thumbs:
        with Image.open(out / "_report" / name) as image:
            assert image.format == "JPEG" and max(image.size) <= 128
    copy = tmp_path / "out"
    shutil.copytree(nights[1], copy)
    assert skutag("report", copy, "--since", nights[0], "--max-thumbs", "3").returncode == 0
    assert len(list((copy / "_report" / "thumbs").glob("*.jpg"))) == 3


@pytest.mark.browser
def test_the_report_renders_from_a_file_with_its_photos_and_counts(reported):
    _, out = reported
    report = json.loads((out / "_report" / "report.json").read_text())
    with headless_chromium(height=1600) as browser:
        browser.get((out / "_report" / "index.html").as_uri())
        count = browser.find_element("css selector", "[data-count=rows] b").text
        assert count == f"{report['counts']['rows']:,}"
        shown = [e.text for e in browser.find_elements("css selector", "h3.change")]
        first = report["changes"][0]
        assert shown[0].startswith(f"{first['from']} → {first['to']}: {first['rows']}")
        images = browser.find_elements("css selector", ".card img")
        sources = {image.get_attribute("src").rsplit("/_report/", 1)[1] for image in images}
        assert sources == {r["thumb"] for r in report["rows"].values() if r.get("thumb")}
        loaded = browser.execute_script(
            "return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length"
        )
        assert loaded == len(images) > 0
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOTS / "report.png"))


def test_a_missing_out_is_one_line(tmp_path):
    result = skutag("report", tmp_path / "nothing")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_the_report_of_an_s3_out(nights, s3):
    before, tonight = nights
    s3.upload_tree(before, "shop", "before")
    s3.upload_tree(tonight, "shop", "tonight")
    result = skutag("report", "s3://shop/tonight", "--since", "s3://shop/before", env=s3.env)
    assert result.returncode == 0, result.stderr
    stored = s3.objects("shop", "tonight/_report/")
    report = json.loads(stored["tonight/_report/report.json"])
    assert report["counts"]["rows"] == 83 and report["changes"]
    assert "tonight/_report/index.html" in stored
    assert (
        sum(1 for key in stored if key.startswith("tonight/_report/thumbs/")) == report["thumbs"]["made"] > 0
    )


def test_run_with_report_writes_the_report_against_its_since(nights, tmp_path):
    from .conftest import PHOTOS, photo_model

    photos = tmp_path / "photos"  # every eighth photo, at the same ids: a small night
    for path in sorted(PHOTOS.rglob("*.jpg"))[::8]:
        (photos / path.relative_to(PHOTOS)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, photos / path.relative_to(PHOTOS))
    model = photo_model(tmp_path / "c.onnx", 2)
    out = tmp_path / "out"
    result = skutag("run", model, photos, "--out", out, "--since", nights[1], "--report")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "_report" / "report.json").read_text())
    rows = len(list(photos.rglob("*.jpg")))
    assert report["since"] == str(nights[1]) and report["counts"]["rows"] == rows
    assert report["counts"]["removed_since"] == 83 - rows
    assert (out / "_report" / "index.html").is_file() and f"report: {rows} rows" in result.stderr


def test_error_rows_are_listed_with_their_messages(tmp_path, tiny_model):
    from .conftest import PHOTOS

    catalog = tmp_path / "catalog" / "dress"
    catalog.mkdir(parents=True)
    photos = sorted((PHOTOS / "dress").glob("*.jpg"))[:3]
    for photo in photos:
        shutil.copy(photo, catalog / photo.name)
    (catalog / "broken.jpg").write_bytes(photos[0].read_bytes()[:300])
    (catalog / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    assert skutag("run", tiny_model, catalog.parent, "--out", out, "--max-error-rate", "1").returncode == 0
    assert skutag("report", out).returncode == 0
    report = json.loads((out / "_report" / "report.json").read_text())
    assert report["counts"]["errors"] == 2 and report["counts"]["errors_by_kind"]["empty"] == 1
    assert sorted(report["errors"]) == ["dress/broken.jpg", "dress/empty.jpg"]
    page = (out / "_report" / "index.html").read_text()
    assert report["rows"]["dress/empty.jpg"]["error"] in page
    assert report["review"] is None and "has no review section" in page
