"""Decode: samples and their collation, the inputs users really have (every one gets its row, none stops
the run), and containment: a decoder that dies or hangs costs one row, the run finishes in one
invocation, every other input ok.

The inputs are served by a real HTTP server on 127.0.0.1 (as a CDN or image service would
serve them). For one URL the server never answers (a read that hangs: NFS, a stalled
store); for another it finds the decode worker that asked (its socket in /proc) and kills
it with SIGKILL while that worker is reading the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from skutag.batchrun.api import run_catalog
from skutag.batchrun.decode.loader import (
    Collate,
    Preprocess,
    ReadOptions,
    decode_one,
    default_workers,
)
from skutag.batchrun.options import RunOptions

from skutag.listing import local_path
from skutag.synth import SynthSpec, render_file
from tests.batchrun.support import sample
from tests.support.cli import skutag
from tests.support.inputs import noise_jpeg, write_hostile_inputs

pytest.importorskip("aiohttp")  # fsspec's https:// reader


@pytest.fixture(scope="module")
def model(tiny_model) -> Path:
    return tiny_model


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    images: dict[str, bytes]
    release: threading.Event
    killed: list[int]
    failing: set[str]  # names answered with 503 Service Unavailable


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        name = self.path.rsplit("/", 1)[-1]
        if body and name.startswith("kill"):  # a HEAD (the plan asks for validators) is answered
            pid = _pid_of_client(self.client_address[1])
            if pid and pid != os.getpid():
                self.server.killed.append(pid)
                os.kill(pid, signal.SIGKILL)
        if body and name.startswith(("hang", "kill")):
            self.server.release.wait(120)  # never answers while the run lasts
            return
        if name in self.server.failing:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = self.server.images[name]
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)


def _pid_of_client(port: int) -> int | None:
    """The process that owns the TCP connection from 127.0.0.1:port (Linux /proc)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inode = fields[9]
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return int(pid)
    return None


@pytest.fixture()
def server():
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.images = {}
    httpd.release = threading.Event()
    httpd.killed = []
    httpd.failing = set()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()


def manifest(tmp_path: Path, server: _Server, names: list[str]) -> Path:
    spec = SynthSpec(count=len(names), classes=4, min_size=48, max_size=64, seed=3)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    for i, name in enumerate(names):
        server.images[name] = render_file(spec, i)[1]
    path = tmp_path / "inputs.parquet"
    pq.write_table(pa.table({"id": names, "uri": [f"{base}/{n}" for n in names]}), path)
    return path


@pytest.mark.timeout(240)
@pytest.mark.parametrize("bad", ["hang-07.jpg", "kill-07.jpg"])
def test_a_hung_or_killed_decoder_costs_one_row_in_the_same_invocation(model, server, tmp_path, bad):
    names = [f"good-{i:02d}.jpg" for i in range(14)] + [bad]
    listing = manifest(tmp_path, server, sorted(names))
    options = RunOptions(batch_size=4, workers=2, decode_timeout_s=4.0, max_error_rate=1.0)
    summary = run_catalog(model, [str(listing)], tmp_path / "out", options)
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "part-00000.parquet").to_pylist()}
    assert sorted(rows) == sorted(names)
    expected = "timeout" if bad.startswith("hang") else "crashed"
    assert rows[bad]["status"] == "error" and rows[bad]["error_kind"] == expected, rows[bad]
    assert all(rows[n]["status"] == "ok" for n in names if n != bad)
    assert summary.worker_restarts == 1 and summary.rows == len(names)
    if expected == "crashed":
        assert server.killed, "the server never found the worker to kill"


@pytest.mark.timeout(240)
def test_a_store_that_fails_is_retried_then_an_unreadable_row_that_retry_errors_redoes(
    model, server, tmp_path, monkeypatch
):
    names = [f"good-{i:02d}.jpg" for i in range(6)]
    listing = manifest(tmp_path, server, names)
    server.failing = {"good-03.jpg"}
    monkeypatch.setenv("SKUTAG_RETRY_BUDGET_S", "2")  # the store fails for longer than that
    options = RunOptions(batch_size=4, workers=1, max_error_rate=1.0)
    first = run_catalog(model, [str(listing)], tmp_path / "out", options)
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "part-00000.parquet").to_pylist()}
    assert rows["good-03.jpg"]["error_kind"] == "unreadable" and "503" in rows["good-03.jpg"]["error"]
    assert first.errors == 1
    assert run_catalog(model, [str(listing)], tmp_path / "out", options).already_complete
    server.failing = set()  # the store recovered
    again = run_catalog(model, [str(listing)], tmp_path / "out", options.replace(retry_errors=True))
    fixed = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "part-00000.parquet").to_pylist()}
    assert sorted(fixed) == names and all(r["status"] == "ok" for r in fixed.values())
    assert again.errors == 0 and again.decoded == 1 and again.reused == 5
    assert all(fixed[n]["predicted_at"] == rows[n]["predicted_at"] for n in names if n != "good-03.jpg")


@pytest.mark.slow  # the local engine contains both in the default run; Ray runs the same decode
@pytest.mark.timeout(400)
def test_the_ray_engine_contains_a_hung_and_a_killed_decoder_too(model, server, tmp_path):
    pytest.importorskip("ray")
    names = [f"good-{i:02d}.jpg" for i in range(10)] + ["hang-03.jpg", "kill-06.jpg"]
    listing = manifest(tmp_path, server, sorted(names))
    # 8 s: the killed decoder must be seen dead before its task's time runs out, also on a busy machine
    # (at load 6, 4 s turned the crash into a timeout)
    options = RunOptions(batch_size=4, engine="ray", decode_timeout_s=8.0, max_error_rate=1.0)
    summary = run_catalog(model, [str(listing)], tmp_path / "out", options)
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "part-00000.parquet").to_pylist()}
    assert sorted(rows) == sorted(names) and summary.rows == len(names)
    assert (rows["hang-03.jpg"]["error_kind"], rows["kill-06.jpg"]["error_kind"]) == ("timeout", "crashed")
    assert all(rows[n]["status"] == "ok" for n in names if n.startswith("good"))
    assert server.killed


@pytest.mark.timeout(240)
@pytest.mark.parametrize("bad", ["hang-03.jpg", "kill-03.jpg"])
def test_workers_0_still_contains_a_hung_or_killed_decoder(model, server, tmp_path, bad):
    """--workers 0 has no pool, but keeps the process boundary: one child with the time limit."""
    names = [f"good-{i:02d}.jpg" for i in range(5)] + [bad]
    listing = manifest(tmp_path, server, sorted(names))
    options = RunOptions(batch_size=4, workers=0, decode_timeout_s=4.0, max_error_rate=1.0)
    summary = run_catalog(model, [str(listing)], tmp_path / "out", options)
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "part-00000.parquet").to_pylist()}
    expected = "timeout" if bad.startswith("hang") else "crashed"
    assert rows[bad]["error_kind"] == expected, rows[bad]
    assert all(rows[n]["status"] == "ok" for n in names if n != bad)
    assert summary.rows == len(names) and summary.worker_restarts == 1


def test_collate_keeps_error_rows_aligned_and_pads_to_a_fixed_batch():
    batch = Collate(image_size=4, pad_to=5)([sample(7, True), sample(8, False), sample(9, True)])
    assert batch.indices.tolist() == [7, 8, 9] and batch.ok.tolist() == [True, False, True]
    assert batch.pixels.shape == (5, 4, 4, 3) and batch.pixels.dtype == torch.uint8
    assert batch.pixels[:, 0, 0, 0].tolist() == [8, 0, 10, 0, 0]
    assert batch.error_kinds == [None, "truncated", None] and batch.widths.tolist() == [10, -1, 10]
    assert len(batch) == 3 and batch.decode_seconds == pytest.approx(1.5)


def test_decode_one_reports_failures_as_samples(tmp_path):
    preprocess = Preprocess(image_size=32, resize_size=40, interpolation="bilinear")
    read = ReadOptions(max_bytes=1 << 20, storage_options={})
    missing = decode_one(0, str(tmp_path / "gone.jpg"), -1, preprocess, read)
    assert missing.pixels is None and missing.error_kind == "unreadable" and missing.nbytes is None
    name, data = render_file(SynthSpec(count=1, classes=2, min_size=64, max_size=96), 0)
    (tmp_path / "good.jpg").write_bytes(data)
    good = decode_one(1, str(tmp_path / "good.jpg"), len(data), preprocess, read)
    assert good.pixels.shape == (32, 32, 3) and good.nbytes == len(data) and len(good.sha256) == 64
    small = ReadOptions(max_bytes=len(data) - 1, storage_options={})
    big = decode_one(2, str(tmp_path / "good.jpg"), len(data), preprocess, small)
    assert big.error_kind == "too_large" and big.nbytes is None  # judged from the size, never read


def test_default_workers_leave_the_cpu_to_inference_and_feed_a_gpu():
    assert default_workers("cpu", cores=1) == 1  # never more decode processes than cores
    assert default_workers("cpu", cores=2) == 2 and default_workers("cpu", cores=16) == 8
    assert default_workers("cuda", cores=16) == 15


def test_awkward_names_layouts_and_formats_each_get_one_row(model, tmp_path):
    root = tmp_path / "catalog"
    expected = write_hostile_inputs(root / "hostile")
    expected = {f"hostile/{name}": kind for name, kind in expected.items()}
    (root / "shoes").mkdir()
    (root / "shoes" / "plain.jpg").write_bytes(noise_jpeg(64, 48))
    expected["shoes/plain.jpg"] = None
    with open(os.path.join(os.fsencode(root / "shoes"), b"caf\xe9.jpg"), "wb") as f:
        f.write(noise_jpeg(64, 48, seed=5))
    expected["shoes/caf%E9.jpg"] = None
    (root / "shoes" / "._plain.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS resource fork
    os.symlink(root, root / "shoes" / "loop")  # back to the top: must not multiply inputs
    (root / "huge.jpg").write_bytes(noise_jpeg(64, 48) + bytes(300_000))
    expected["huge.jpg"] = "too_large"
    out = tmp_path / "out"
    result = skutag(
        "run", model, root, "--out", out, "--max-bytes", 200_000, "--max-error-rate", "1", "--no-progress"
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    rows = ds.dataset(out, format="parquet").to_table().to_pylist()
    by_id = {row["id"]: row for row in rows}
    assert len(rows) == len(by_id) == len(expected) and set(by_id) == set(expected)
    for input_id, kind in expected.items():
        row = by_id[input_id]
        got = None if row["status"] == "ok" else row["error_kind"]
        assert got == kind, (input_id, row["error"])
    odd = by_id["shoes/caf%E9.jpg"]
    assert os.path.basename(local_path(odd["uri"])) == b"caf\xe9.jpg"
    assert "not read" in by_id["huge.jpg"]["error"] and by_id["huge.jpg"]["sha256"] is None
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["skipped"]["hidden"] == 1 and summary["skipped"]["revisited_dirs"] == 1
