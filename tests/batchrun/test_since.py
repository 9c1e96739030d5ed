"""Nightly runs: `--since` reuses only what is proven unchanged, ids that share an image share one decode,
shards share one plan, and an incomplete earlier run is refused unless told.

URL inputs come from a real threaded HTTP server started here, whose bytes change between
two nights: with validators (ETag, or Last-Modified) the changed image is predicted again;
without any, its sha256 is compared (the same URL list gives the same plan every night, so
nothing else could tell).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from email.utils import formatdate
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from skutag.batchrun.api import run_catalog
from skutag.batchrun.options import RunOptions
from skutag.batchrun.plan.catalog import read_plan
from skutag.batchrun.plan.shard import Shard

from skutag.errors import InputError
from skutag.synth import SynthSpec, render_file
from tests.batchrun.support import SPEC, read_rows, run_command, tiny_catalog
from tests.support.cli import skutag
from tests.support.imagehost import ImageHost


@pytest.fixture(scope="module")
def model(tiny_model) -> Path:
    return tiny_model


def same_prediction(a: dict, b: dict) -> bool:
    keys = ("uri", "version", "status", "error_kind", "label_index", "width", "height", "bytes", "sha256")
    return all(a[k] == b[k] for k in keys) and a["topk_scores"] == pytest.approx(b["topk_scores"], abs=1e-5)


def test_since_reuses_unchanged_rows_and_predicts_only_new_and_changed(model, tmp_path):
    catalog = tmp_path / "catalog"
    tiny_catalog(catalog, 40, seed=5)
    options = RunOptions(batch_size=8, part_rows=16, max_error_rate=1.0)
    run_catalog(model, [str(catalog)], tmp_path / "night1", options)
    before = read_rows(tmp_path / "night1")
    files = sorted(before)
    changed, removed = files[:3], files[3:5]
    spec = SynthSpec(count=60, classes=4, min_size=48, max_size=64, seed=9)
    for i, name in enumerate(changed):
        (catalog / name).write_bytes(render_file(spec, 50 + i)[1])  # new bytes, new size:mtime
    for name in removed:
        (catalog / name).unlink()
    new = [f"{files[0].split('/')[0]}/zz-new-{i}.jpg" for i in range(2)]
    for i, name in enumerate(new):
        (catalog / name).write_bytes(render_file(spec, i)[1])
    since = run_catalog(
        model, [str(catalog)], tmp_path / "night2", options.replace(since=str(tmp_path / "night1"))
    )
    fresh = run_catalog(model, [str(catalog)], tmp_path / "fresh", options)
    after, scratch = read_rows(tmp_path / "night2"), read_rows(tmp_path / "fresh")
    assert sorted(after) == sorted(scratch) == sorted(set(files) - set(removed) | set(new))
    for input_id, row in after.items():
        if input_id in changed or input_id in new:
            assert (
                same_prediction(row, scratch[input_id])
                and row["predicted_at"] > before[files[0]]["predicted_at"]
            )
        else:
            assert row == before[input_id]  # copied whole, predicted_at kept
    unchanged = len(files) - len(changed) - len(removed)
    assert (since.reused, since.new, since.changed, since.removed) == (unchanged, 2, 3, 2)
    assert since.decoded == 5 and since.predicted == 5 and fresh.decoded == len(after)


def test_since_with_another_model_reuses_nothing_and_says_so(model, tmp_path):
    import onnx

    catalog = tmp_path / "catalog"
    tiny_catalog(catalog, 8, seed=2, classes=2)
    run_catalog(model, [str(catalog)], tmp_path / "a", RunOptions())
    other = tmp_path / "other.onnx"
    proto = onnx.load(str(model))
    proto.doc_string = "retrained"
    onnx.save(proto, str(other))
    summary = run_catalog(other, [str(catalog)], tmp_path / "b", RunOptions(since=str(tmp_path / "a")))
    assert summary.reused == 0 and summary.decoded == 8
    assert "reusing nothing" in summary.since_note and "model sha256" in summary.since_note


def test_a_manifest_of_1000_ids_over_50_images_gives_1000_rows_and_50_decodes(model, tmp_path):
    catalog = tmp_path / "catalog"
    tiny_catalog(catalog, 50, seed=7)
    images = sorted(str(p) for p in catalog.rglob("*") if p.suffix in (".jpg", ".png"))
    assert len(images) == 50
    ids = [f"sku-{i:04d}" for i in range(1000)]
    pq.write_table(
        pa.table({"id": ids, "path": [images[(i * 7) % 50] for i in range(1000)]}), tmp_path / "m.parquet"
    )
    summary = run_catalog(model, [str(tmp_path / "m.parquet")], tmp_path / "out", RunOptions(batch_size=16))
    out = read_rows(tmp_path / "out")
    assert sorted(out) == ids and summary.rows == 1000 and summary.decoded == 50
    by_image: dict[str, set] = {}
    for row in out.values():
        by_image.setdefault(row["uri"], set()).add((row["label_index"], row["sha256"]))
    assert len(by_image) == 50 and all(len(v) == 1 for v in by_image.values())  # one prediction per image


@pytest.mark.slow  # test_plan.py: the plan is made once and read by later calls, in the default run
def test_shards_started_while_the_catalog_changes_cover_one_plan_exactly_once(model, tmp_path):
    catalog = tmp_path / "catalog"
    tiny_catalog(catalog, 48, seed=11)
    out = tmp_path / "out"

    def shard(index: int) -> subprocess.Popen:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "skutag",
                "run",
                str(model),
                str(catalog),
                "--out",
                str(out),
                "--shard",
                f"{index}/3",
                "--part-size",
                "8",
                "--no-progress",
                "--max-error-rate",
                "1",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    spec = SynthSpec(count=70, classes=4, min_size=48, max_size=64, seed=12)
    processes = [shard(0)]
    for i in range(6):  # uploads land between the shards' starts
        (catalog / f"late-{i}.jpg").write_bytes(render_file(spec, i)[1])
    processes.append(shard(1))
    for i in range(6, 9):
        (catalog / f"late-{i}.jpg").write_bytes(render_file(spec, i)[1])
    processes.append(shard(2))
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    plan = read_plan(str(out))
    planned = []
    for unit in plan.units:
        planned += plan.read_unit(unit).column("id").to_pylist()
    got = duckdb.sql(f"SELECT id FROM '{out}/*.parquet'").fetchall()
    assert sorted(i for (i,) in got) == sorted(planned)  # each planned input exactly once
    assert len(planned) == plan.total and len(set(planned)) == len(planned)
    assert all((out / f"_SUCCESS.s000{i}-of-0003").exists() for i in range(3))
    assert (out / "_SUCCESS").exists()  # whichever shard ended last saw every unit committed


def test_since_refuses_an_incomplete_run_unless_told(tiny_model, six_images, tmp_path):
    prev = tmp_path / "prev"
    common = dict(batch_size=2, workers=1, part_rows=2, max_error_rate=1.0)
    run_catalog(tiny_model, [str(six_images)], prev, RunOptions(shard=Shard(0, 2), **common))
    result = skutag(
        "run", tiny_model, six_images, "--out", tmp_path / "night", "--since", prev, "--no-progress"
    )
    assert result.returncode == 2 and "incomplete (no _SUCCESS" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    summary = run_catalog(
        tiny_model,
        [str(six_images)],
        tmp_path / "night",
        RunOptions(since=str(prev), since_incomplete=True, **common),
    )
    assert summary.reused == 2 and summary.rows == 6  # shard 0's committed unit was copied
    with pytest.raises(InputError, match="incomplete"):
        run_catalog(tiny_model, [str(six_images)], tmp_path / "n2", RunOptions(since=str(prev), **common))


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
    return read_rows(tmp_path / "night1"), read_rows(tmp_path / "night2"), summary


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


def test_rows_a_setting_decided_are_read_again_when_the_setting_changes(tiny_model, six_images, tmp_path):
    """A --max-bytes night makes every row `too_large`; the next --since night without it reads them again."""
    common = dict(batch_size=2, workers=1, max_error_rate=1.0)
    first = run_catalog(tiny_model, [str(six_images)], tmp_path / "a", RunOptions(max_bytes=1000, **common))
    assert first.errors_by_kind == {"too_large": 6}
    second = run_catalog(
        tiny_model, [str(six_images)], tmp_path / "b", RunOptions(since=str(tmp_path / "a"), **common)
    )
    assert second.ok == 6 and second.retried == 6 and second.reused == 0
    third = run_catalog(
        tiny_model, [str(six_images)], tmp_path / "c", RunOptions(since=str(tmp_path / "b"), **common)
    )
    assert third.reused == 6 and third.decoded == 0  # unchanged settings: copied as before
    fourth = run_catalog(
        tiny_model, [str(six_images)], tmp_path / "d",
        RunOptions(since=str(tmp_path / "c"), max_bytes=1000, **common),
    )  # fmt: skip
    assert fourth.reused == 6  # ok rows stay ok: only error rows a setting decided are read again
    result = skutag(
        "run", tiny_model, six_images, "--out", tmp_path / "e", "--max-bytes", 1000, "--no-progress",
        "--max-error-rate", 1,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    redo = skutag("run", tiny_model, six_images, "--out", tmp_path / "e", "--retry-errors", "--no-progress")
    assert redo.returncode == 0, redo.stderr
    assert {row["status"] for row in read_rows(tmp_path / "e").values()} == {"ok"}  # --retry-errors too


# -- every shard's commit log, --retry-errors and _SUCCESS, version-less inputs ----------------------


def test_since_checks_every_shards_commit_log_not_only_the_first(tiny_model, six_images, tmp_path):
    """An earlier OUT whose second shard's log names another model: --since reuses nothing and says so
    (rows of that shard must not be copied as if the model were the same)."""
    common = dict(batch_size=2, workers=1, part_rows=3, max_error_rate=1.0)
    for index in (0, 1):
        run_catalog(
            tiny_model, [str(six_images)], tmp_path / "a", RunOptions(shard=Shard(index, 2), **common)
        )
    assert (tmp_path / "a" / "_SUCCESS").exists()
    second = tmp_path / "a" / "_commits.s0001-of-0002.json"
    log = json.loads(second.read_text())
    log["key"]["model_sha256"] = "0" * 64  # that shard was made by another model
    second.write_text(json.dumps(log))
    summary = run_catalog(
        tiny_model, [str(six_images)], tmp_path / "b", RunOptions(since=str(tmp_path / "a"), **common)
    )
    assert summary.reused == 0 and summary.decoded == 6
    assert "reusing nothing" in summary.since_note and "model sha256" in summary.since_note


def test_retry_errors_takes_success_down_while_it_rewrites_parts_and_puts_it_back(tiny_model, tmp_path):
    """Night 1: one URL answers 404 (an `unreadable` row). `--retry-errors` while that URL is slow: during
    the rewrite OUT/_SUCCESS is absent (a reader must not trust a part being replaced); after it, back."""
    photo = render_file(SPEC, 1)[1]
    with ImageHost({"p0.jpg": photo, "p1.jpg": photo}) as host:
        urls = tmp_path / "urls.txt"
        urls.write_text(host.url("p0.jpg") + "\n" + host.url("p1.jpg") + "\n")
        out = tmp_path / "out"
        missing = host.images.pop("p1.jpg")
        first = run_catalog(
            tiny_model, [str(urls)], out, RunOptions(batch_size=1, workers=1, max_error_rate=1.0)
        )
        assert first.errors_by_kind == {"unreadable": 1} and (out / "_SUCCESS").exists()
        host.images["p1.jpg"], host.slow["p1.jpg"] = missing, 3.0
        gets = len(host.gets["p1.jpg"])
        rerun = subprocess.Popen(
            run_command(tiny_model, urls, "--out", out, "--retry-errors", "--workers", 1, "--batch-size", 1),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while len(host.gets["p1.jpg"]) == gets:  # until the rerun reads the input it retries
                assert time.monotonic() < deadline and rerun.poll() is None, "the rerun never read p1.jpg"
                time.sleep(0.05)
            assert not (out / "_SUCCESS").exists()  # down while the part is rewritten
            _, stderr = rerun.communicate(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                rerun.kill()
            rerun.wait(timeout=30)
    assert rerun.returncode == 0, stderr
    assert (out / "_SUCCESS").exists()
    assert {row["status"] for row in read_rows(out).values()} == {"ok"}


def test_version_less_inputs_are_hashed_only_up_to_max_bytes(model, tmp_path):
    """URLs without validators (no version: --since hashes them); night 2 --since with a --max-bytes below
    one image's size: that image is not hashed whole (so not copied as ok) but predicted again, and its
    row is `too_large`; the others are copied."""
    photos = {f"p{i}.jpg": render_file(SPEC, i)[1] for i in range(3)}
    photos["p2.jpg"] += b"\0" * 300_000  # a JPEG padded after its end: it still decodes
    with ImageHost(photos) as host:
        host.etags = False
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(host.url(name) + "\n" for name in sorted(photos)))
        options = RunOptions(batch_size=4, workers=0, max_error_rate=1.0)
        assert run_catalog(model, [str(urls)], tmp_path / "a", options).ok == 3
        summary = run_catalog(
            model, [str(urls)], tmp_path / "b", options.replace(since=str(tmp_path / "a"), max_bytes=100_000)
        )
    rows = read_rows(tmp_path / "b")
    assert rows[next(key for key in rows if key.endswith("p2.jpg"))]["error_kind"] == "too_large"
    assert (summary.reused, summary.changed, summary.decoded) == (2, 1, 1)


def test_a_slow_version_less_input_does_not_stall_the_plan_and_gets_its_row(model, tmp_path):
    """URLs without validators are hashed for --since in child processes under --decode-timeout: one URL
    that answers after 60 s costs the plan one time limit (not the whole wait, and not the main
    process), and becomes its own `timeout` row while the others are reused."""
    photos = {f"p{i}.jpg": render_file(SPEC, i)[1] for i in range(3)}
    with ImageHost(photos) as host:
        host.etags = False
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(host.url(name) + "\n" for name in sorted(photos)))
        options = RunOptions(batch_size=4, workers=1, max_error_rate=1.0, decode_timeout_s=2.0)
        assert run_catalog(model, [str(urls)], tmp_path / "a", options).ok == 3
        host.slow["p1.jpg"] = 60.0
        started = time.monotonic()
        summary = run_catalog(model, [str(urls)], tmp_path / "b", options.replace(since=str(tmp_path / "a")))
        took = time.monotonic() - started
    assert took < 30, took
    rows = read_rows(tmp_path / "b")
    slow = next(key for key in rows if key.endswith("p1.jpg"))
    assert rows[slow]["error_kind"] == "timeout"
    assert (summary.reused, summary.changed, summary.decoded) == (2, 1, 1)
