"""Nights you can trust: `--since` reuses only what is proven unchanged; a listing fails whole or not at all.

URL inputs come from a real threaded HTTP server started here, whose bytes change between
two nights: with validators (ETag, or Last-Modified) the changed image is predicted again;
without any, its sha256 is compared (the same URL list gives the same plan every night, so
nothing else could tell). A local folder that cannot be listed fails the plan with exit 75.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from email.utils import formatdate
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pytest
from skutag.batchrun.api import run_catalog
from skutag.batchrun.options import RunOptions
from skutag.batchrun.plan.catalog import PLAN_DIR, read_plan

from skutag.synth import SynthSpec, render_file
from tests.cli import skutag

SPEC = SynthSpec(count=20, classes=4, min_size=48, max_size=64, seed=3)


@pytest.fixture(scope="module")
def model(tiny_model) -> Path:
    return tiny_model


@contextlib.contextmanager
def http_server(root: Path, validators: str):
    """Serve `root` on 127.0.0.1; `validators`: 'etag' (content hash), 'last-modified' (mtime) or 'none'."""

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

        def send_header(self, keyword, value):
            if keyword.lower() in ("etag", "last-modified"):
                return  # added below, as the mode says
            super().send_header(keyword, value)

        def end_headers(self):
            path = Path(self.translate_path(self.path))
            if path.is_file() and validators == "etag":
                super().send_header("ETag", '"' + hashlib.md5(path.read_bytes()).hexdigest() + '"')
            if path.is_file() and validators == "last-modified":
                super().send_header("Last-Modified", formatdate(path.stat().st_mtime, usegmt=True))
            super().end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def rows(out: Path) -> dict[str, dict]:
    table = duckdb.sql(f"SELECT * FROM '{out}/*.parquet'").to_arrow_table().to_pylist()
    return {row["id"]: row for row in table}


def same_size_image(size: int) -> bytes:
    """Another picture of exactly `size` bytes (a JPEG padded after its end): the size says nothing."""
    data = next(d for d in (render_file(SPEC, i)[1] for i in range(10, 60)) if len(d) < size)
    return data + b"\0" * (size - len(data))


def night_two_after_changing(tmp_path: Path, model: Path, source: str, changed: Path, options: RunOptions):
    """Night 1, then new bytes of the same size for `changed` (mtime moved on), then night 2 with --since."""
    run_catalog(model, [source], tmp_path / "night1", options)
    changed.write_bytes(same_size_image(changed.stat().st_size))
    later = changed.stat().st_mtime + 5
    os.utime(changed, (later, later))
    summary = run_catalog(
        model, [source], tmp_path / "night2", options.replace(since=str(tmp_path / "night1"))
    )
    return rows(tmp_path / "night1"), rows(tmp_path / "night2"), summary


@pytest.mark.parametrize("validators", ["etag", "last-modified", "none"])
def test_url_inputs_whose_bytes_change_are_predicted_again_and_only_they(model, tmp_path, validators):
    site = tmp_path / "site"
    site.mkdir()
    for i in range(3):
        (site / f"p{i}.jpg").write_bytes(render_file(SPEC, i)[1])
    with http_server(site, validators) as base:
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(f"{base}/p{i}.jpg\n" for i in range(3)))
        options = RunOptions(batch_size=4, workers=0, max_error_rate=0.0)
        before, after, summary = night_two_after_changing(
            tmp_path, model, str(urls), site / "p1.jpg", options
        )
        plan = read_plan(str(tmp_path / "night2"))
        versions = plan.read_unit(plan.units[0]).column("version").to_pylist()
    assert all(v is not None for v in versions) == (validators != "none")
    assert all(v is None for v in versions) == (validators == "none")
    changed_id = next(i for i in after if i.endswith("p1.jpg"))
    assert after[changed_id]["sha256"] == hashlib.sha256((site / "p1.jpg").read_bytes()).hexdigest()
    assert after[changed_id]["sha256"] != before[changed_id]["sha256"]
    assert after[changed_id]["predicted_at"] > before[changed_id]["predicted_at"]
    for input_id in after:
        if input_id != changed_id:
            assert after[input_id] == before[input_id]  # copied whole: no stale row, no needless work
    assert (summary.reused, summary.changed, summary.new, summary.removed) == (2, 1, 0, 0)
    assert summary.decoded == 1


def test_a_manifest_of_local_files_without_versions_redoes_exactly_the_changed_file(model, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"p{i}.jpg").write_bytes(render_file(SPEC, i)[1])
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,path,version\n" + "".join(f"sku-{i},images/p{i}.jpg,\n" for i in range(3)))
    options = RunOptions(batch_size=4, workers=0, max_error_rate=0.0)
    before, after, summary = night_two_after_changing(
        tmp_path, model, str(manifest), images / "p2.jpg", options
    )
    assert after["sku-2"]["sha256"] == hashlib.sha256((images / "p2.jpg").read_bytes()).hexdigest()
    assert after["sku-2"]["sha256"] != before["sku-2"]["sha256"]
    assert after["sku-0"] == before["sku-0"] and after["sku-1"] == before["sku-1"]
    assert (summary.reused, summary.changed, summary.decoded) == (2, 1, 1)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads a folder whatever its mode")
def test_an_unreadable_subfolder_fails_the_plan_with_exit_75_and_publishes_nothing(tmp_path):
    catalog = tmp_path / "catalog"
    for folder in ("a", "b"):
        (catalog / folder).mkdir(parents=True)
        (catalog / folder / "x.jpg").write_bytes(render_file(SPEC, 0)[1])
    (catalog / "b").chmod(0)
    try:
        result = skutag("plan", catalog, "--out", tmp_path / "out")
    finally:
        (catalog / "b").chmod(0o755)
    assert result.returncode == 75, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and str(catalog / "b") in result.stderr
    assert not (tmp_path / "out" / PLAN_DIR).exists() or not list((tmp_path / "out" / PLAN_DIR).iterdir())


def test_a_folder_that_cannot_be_listed_is_an_error_not_an_empty_folder(tmp_path):
    """The listing itself, as root too: a folder that vanishes (or is denied) raises ListingError."""
    from skutag.errors import ListingError
    from skutag.listing import walk_images

    catalog = tmp_path / "catalog"
    (catalog / "a").mkdir(parents=True)
    (catalog / "a" / "x.jpg").write_bytes(b"x")
    (catalog / "c").mkdir()
    (catalog / "c" / "y.jpg").write_bytes(b"y")
    listing = walk_images(catalog)
    first = next(listing)
    (catalog / "c" / "y.jpg").unlink()
    (catalog / "c").rmdir()  # vanishes between the parent's listing and its own
    with pytest.raises(ListingError, match="cannot list .*catalog/c"):
        list(listing)
    assert first.id == "a/x.jpg"
