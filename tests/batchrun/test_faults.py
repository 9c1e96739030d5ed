"""Faults a night meets, on real processes: a live shard twice, a zombie, denied storage, a failing model.

- Two real `skutag run` processes on one shard (OUT local and on moto_server): the second
  refuses in one line with exit 75; a stopped holder's lease expires and a rerun takes over;
  the woken holder stops at its lease check with exit 75 and changes no byte of the parts or log.
- A zombie that passed its lease check and stalled past the TTL (the fault proxy's `hold`): its
  late part upload fails against the newcomer's, not one byte of OUT changes, a reader sees the
  newcomer's rows.
- Every GetObject answering 403 (moto behind tests/support/faultproxy.py): exit 4 in one line, no
  `_SUCCESS`, no part, on the local engine and on Ray; one 403 among good files stays a row.
- A model that raises at run time (a real ONNX graph whose Gather index is out of bounds for
  every input): exit 4 on both engines, nothing published.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from skutag.batchrun.commit.reader import CommittedRows

from tests.batchrun.support import run_command
from tests.support.cli import skutag
from tests.support.s3server import moto_server

BUCKET = "night"


@pytest.fixture(scope="module")
def s3(six_images):
    with moto_server() as server:
        server.client().create_bucket(Bucket=BUCKET)
        server.upload_tree(six_images, BUCKET, "cat")
        yield server


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if not line.startswith(("WARNING", "INFO"))]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# -- one live process per shard ------------------------------------------------------------------


class Stall:
    """An HTTP server with one image whose GET waits until `release()`: holds a run mid-shard."""

    def __init__(self, data: bytes):
        self.requested, self.released = threading.Event(), threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _head(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()

            def do_HEAD(self) -> None:
                self._head()

            def do_GET(self) -> None:
                outer.requested.set()
                outer.released.wait(120)
                self._head()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/slow.jpg"

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


def lease_expired(read_lease) -> bool:
    try:
        return json.loads(read_lease())["expires_at"] < time.time()
    except (OSError, ValueError, KeyError):
        return False


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.slow)])
def test_a_live_shard_refuses_a_second_process_and_a_woken_holder_changes_nothing(
    where, tiny_model, six_images, tmp_path, request
):
    stall = Stall(next(six_images.rglob("*.jpg")).read_bytes())
    urls = tmp_path / "urls.txt"
    urls.write_text(stall.url + "\n")
    env = dict(os.environ)
    if where == "s3":
        s3 = request.getfixturevalue("s3")
        env = s3.env
        out = f"s3://{BUCKET}/out-{tmp_path.name}"

        def read(name: str) -> bytes:
            return s3.client().get_object(Bucket=BUCKET, Key=f"{out.split('/', 3)[3]}/{name}")["Body"].read()

        def exists(name: str) -> bool:
            with contextlib.suppress(Exception):
                return read(name) is not None
            return False
    else:
        out = str(tmp_path / "out")

        def read(name: str) -> bytes:
            return (Path(out) / name).read_bytes()

        def exists(name: str) -> bool:
            return (Path(out) / name).exists()

    args = run_command(tiny_model, six_images, urls, "--out", out, "--lease-ttl", 3, "--workers", 1,
                   "--batch-size", 1, "--part-rows", 2, "--max-error-rate", 1)  # fmt: skip
    holder = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert stall.requested.wait(120), "the first run never reached the stalled input"
        assert exists("_lease.json")
        second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 75 and "another process runs this shard" in one_line(second.stderr)
        holder.send_signal(signal.SIGSTOP)  # alive, but no longer renewing: a zombie
        deadline = time.monotonic() + 30
        while not lease_expired(lambda: read("_lease.json")) and time.monotonic() < deadline:
            time.sleep(0.2)
        stall.release()
        rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert "taking over the expired lease" in rerun.stderr
        log = json.loads(read("_commits.json"))
        assert exists("_SUCCESS") and len(log["parts"]) == 4 and not exists("_lease.json")
        finished = {name: read(name) for name in ("_commits.json", *(p["file"] for p in log["parts"]))}
        holder.send_signal(signal.SIGCONT)  # wakes with the stalled input's result for a unit to commit
        _, stderr = holder.communicate(timeout=120)
        assert holder.returncode == 75, stderr
        assert "lost the lease" in stderr
        assert {name: read(name) for name in finished} == finished  # its unit's part and the log: unchanged
        assert exists("_SUCCESS")
    finally:
        with contextlib.suppress(ProcessLookupError):
            holder.send_signal(signal.SIGCONT)
            holder.kill()
        holder.wait(timeout=30)
        stall.close()


# -- systemic faults -----------------------------------------------------------------------------


@pytest.fixture
def denied(s3):
    from tests.support.faultproxy import FaultProxy

    with FaultProxy(s3) as proxy:
        yield proxy


def test_every_object_denied_stops_the_local_run_with_exit_4_and_publishes_nothing(
    tiny_model, denied, tmp_path
):
    from prometheus_client.parser import text_string_to_metric_families

    denied.deny_gets()
    out, metrics = tmp_path / "out", tmp_path / "skutag.prom"
    result = subprocess.run(
        run_command(tiny_model, f"s3://{BUCKET}/cat", "--out", out, "--workers", 1, "--max-error-rate", 1,
                "--metrics-file", metrics),
        env=denied.s3.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert "access denied" in one_line(result.stderr)
    assert denied.hits["deny_gets"] >= 1
    assert not (out / "_SUCCESS").exists() and not list(out.glob("part-*"))
    samples = {
        s.name: s.value for f in text_string_to_metric_families(metrics.read_text()) for s in f.samples
    }
    assert samples["skutag_run_exit_code"] == 4 and samples["skutag_run_success"] == 0


def test_one_denied_object_among_good_ones_is_a_row(tiny_model, denied, tmp_path):
    denied.deny_gets(r"cat/.*000001\.jpg$")
    out = tmp_path / "out"
    result = subprocess.run(
        run_command(tiny_model, f"s3://{BUCKET}/cat", "--out", out, "--workers", 1, "--max-error-rate", 1),
        env=denied.s3.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["errors_by_kind"] == {"unreadable": 1} and summary["ok"] == 5
    assert (out / "_SUCCESS").exists()


@pytest.mark.slow
def test_every_object_denied_stops_the_ray_run_with_exit_4(tiny_model, denied, tmp_path):
    from tests.batchrun.support import Tag

    denied.deny_gets()
    out = tmp_path / "out"
    tag = Tag()
    try:
        result = subprocess.run(
            run_command(tiny_model, f"s3://{BUCKET}/cat", "--out", out, "--engine", "ray", "--max-error-rate", 1),
            env=tag.env(**{k: v for k, v in denied.s3.env.items() if k.startswith("AWS_")}),
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        left = tag.wait_gone()
    finally:
        tag.close()
    assert result.returncode == 4, result.stderr
    assert "access denied" in result.stderr.strip().splitlines()[-1]
    assert not (out / "_SUCCESS").exists() and not list(out.glob("part-*"))
    assert not left


# -- a model that raises -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def failing_model(tiny_model, tmp_path_factory) -> Path:
    """tiny_model with `probs = probs + 0 * Gather([0, 0], max(image) + 1000)`: a valid graph that
    ONNX Runtime loads, whose Gather index is out of bounds at run time for every input."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(tiny_model))
    graph = model.graph
    image = graph.input[0].name
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == "probs":
                node.output[i] = "probs_raw"
    graph.initializer.extend(
        [
            helper.make_tensor("trap_data", TensorProto.FLOAT, [2], [0.0, 0.0]),
            helper.make_tensor("trap_offset", TensorProto.INT64, [], [1000]),
            helper.make_tensor("trap_zero", TensorProto.FLOAT, [], [0.0]),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Cast", [image], ["trap_float"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMax", ["trap_float"], ["trap_max"], keepdims=0),
            helper.make_node("Cast", ["trap_max"], ["trap_int"], to=TensorProto.INT64),
            helper.make_node("Add", ["trap_int", "trap_offset"], ["trap_index"]),
            helper.make_node("Gather", ["trap_data", "trap_index"], ["trap_value"]),
            helper.make_node("Mul", ["trap_value", "trap_zero"], ["trap_nothing"]),
            helper.make_node("Add", ["probs_raw", "trap_nothing"], ["probs"]),
        ]
    )
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("failing") / "failing.onnx"
    onnx.save(model, str(path))
    return path


def test_a_model_that_raises_stops_the_local_run_with_exit_4(failing_model, six_images, tmp_path):
    out = tmp_path / "out"
    result = skutag("run", failing_model, six_images, "--out", out, "--workers", 1, "--no-progress")
    assert result.returncode == 4, result.stderr
    last = result.stderr.strip().splitlines()[-1]  # ONNX Runtime logs the kernel's error itself first
    assert last.startswith("Error: stopped: inference failed") and "Gather" in last
    assert "Traceback" not in result.stderr
    assert not (out / "_SUCCESS").exists() and not list(out.glob("part-*"))


@pytest.mark.slow
def test_a_model_that_raises_stops_the_ray_run_with_exit_4_not_crashed_rows(
    failing_model, six_images, tmp_path
):
    from tests.batchrun.support import Tag

    out = tmp_path / "out"
    tag = Tag()
    try:
        result = subprocess.run(
            run_command(failing_model, six_images, "--out", out, "--engine", "ray", "--max-error-rate", 1),
            env=tag.env(), capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        left = tag.wait_gone()
    finally:
        tag.close()
    assert result.returncode == 4, result.stderr
    assert "inference failed" in result.stderr.strip().splitlines()[-1]
    assert not (out / "_SUCCESS").exists() and not list(out.glob("part-*"))
    assert not left


def test_a_deleted_bucket_stops_the_run_but_missing_objects_stay_rows(tiny_model, s3, six_images, tmp_path):
    client = s3.client()
    for bucket in ("gone", "emptied"):
        client.create_bucket(Bucket=bucket)
        keys = s3.upload_tree(six_images, bucket, "cat")
        planned = skutag("plan", f"s3://{bucket}/cat", "--out", tmp_path / bucket, env=s3.env)
        assert planned.returncode == 0, planned.stderr
        for key in keys:
            client.delete_object(Bucket=bucket, Key=key)
    client.delete_bucket(Bucket="gone")
    args = ["--workers", 1, "--max-error-rate", 1, "--no-progress"]
    gone = skutag("run", tiny_model, "s3://gone/cat", "--out", tmp_path / "gone", *args, env=s3.env)
    assert gone.returncode == 4 and "missing bucket (NoSuchBucket)" in one_line(gone.stderr)
    assert not (tmp_path / "gone" / "_SUCCESS").exists()
    emptied = skutag("run", tiny_model, "s3://emptied/cat", "--out", tmp_path / "emptied", *args, env=s3.env)
    assert emptied.returncode == 0, emptied.stderr
    summary = json.loads((tmp_path / "emptied" / "_summary.json").read_text())
    assert summary["errors_by_kind"] == {"unreadable": 6} and (tmp_path / "emptied" / "_SUCCESS").exists()


@pytest.mark.slow  # four runs; one denied object among good ones is a row in the default run
def test_one_forbidden_object_does_not_stop_later_nights(tiny_model, denied, tmp_path):
    """One object answers 403 for good: night 1, two --since nights and a --retry-errors rerun all finish
    (the only input left to read is a known-bad object: no evidence about the store, a normal night)."""
    denied.deny_gets(r"cat/.*000001\.jpg$")
    nights = [tmp_path / f"night{i}" for i in range(3)]

    def night(out, *extra):
        return subprocess.run(
            run_command(tiny_model, f"s3://{BUCKET}/cat", "--out", out, "--workers", 1,
                        "--max-error-rate", 0.5, *extra),
            env=denied.s3.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    first = night(nights[0])
    assert first.returncode == 0, first.stderr
    for before, out in zip(nights, nights[1:], strict=False):
        result = night(out, "--since", before)
        assert result.returncode == 0, result.stderr
        summary = json.loads((out / "_summary.json").read_text())
        assert summary["errors_by_kind"] == {"unreadable": 1} and summary["reused"] == 5
        assert summary["retried"] == 1 and (out / "_SUCCESS").exists()
    again = night(nights[2], "--retry-errors")
    assert again.returncode == 0, again.stderr
    assert (nights[2] / "_SUCCESS").exists()
    assert json.loads((nights[2] / "_summary.json").read_text())["errors_by_kind"] == {"unreadable": 1}
    assert denied.hits["deny_gets"] >= 4  # the bad object was read again each time


@pytest.mark.slow  # every object denied stops the local run with exit 4 in the default run
def test_every_object_denied_on_a_since_night_still_stops_with_exit_4(tiny_model, denied, tmp_path):
    """The store itself turns: the changed inputs fail, and the probe of an object the run knows
    exists fails too: exit 4, nothing published."""
    first = subprocess.run(
        run_command(tiny_model, f"s3://{BUCKET}/cat", "--out", tmp_path / "a", "--workers", 1),
        env=denied.s3.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    client = denied.upstream.client()
    key = sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="cat/")["Contents"])[0]
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    try:
        client.put_object(Bucket=BUCKET, Key=key, Body=body + b"\0")  # a new version: read again tonight
        denied.deny_gets()
        out = tmp_path / "b"
        result = subprocess.run(
            run_command(tiny_model, f"s3://{BUCKET}/cat", "--out", out, "--workers", 1, "--since", tmp_path / "a"),
            env=denied.s3.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 4, result.stderr
        assert "access denied" in one_line(result.stderr)
        assert not (out / "_SUCCESS").exists()
    finally:
        client.put_object(Bucket=BUCKET, Key=key, Body=body)


# -- SIGTERM and SIGINT --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signum",
    [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],  # one code path for both
)
def test_a_signal_mid_run_stops_cleanly_and_a_rerun_takes_over_at_once(
    signum, tiny_model, six_images, tmp_path
):
    from prometheus_client.parser import text_string_to_metric_families

    stall = Stall(next(six_images.rglob("*.jpg")).read_bytes())
    urls = tmp_path / "urls.txt"
    urls.write_text(stall.url + "\n")
    out, metrics = tmp_path / "out", tmp_path / "m.prom"
    args = run_command(tiny_model, six_images, urls, "--out", out, "--workers", 1, "--batch-size", 1,
                       "--part-rows", 2, "--max-error-rate", 1, "--metrics-file", metrics)  # fmt: skip
    holder = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert stall.requested.wait(120), "the run never reached the stalled input"
        holder.send_signal(signum)
        started = time.monotonic()
        _, stderr = holder.communicate(timeout=60)
        assert time.monotonic() - started < 15, stderr
        assert holder.returncode == 75, stderr
        line = one_line(stderr)
        assert signal.Signals(signum).name in line and "committed part(s) of this shard kept" in line
        assert not (out / "_lease.json").exists() and not (out / "_SUCCESS").exists()
        samples = {
            s.name: s.value for f in text_string_to_metric_families(metrics.read_text()) for s in f.samples
        }
        assert samples["skutag_run_exit_code"] == 75
        stall.release()
        rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert "taking over" not in rerun.stderr and (out / "_SUCCESS").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            holder.kill()
        holder.wait(timeout=30)
        stall.close()


def wait_for(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow  # test_races.py holds the same zombie past the TTL in the default run, without a model
def test_a_zombie_that_passed_check_and_stalled_past_the_ttl_loses_no_unit(tiny_model, denied, tmp_path):
    """Made deterministic by the fault proxy: the holder passes `check()` for unit 1, then its part
    upload and its next lease renewal hang; a newcomer takes the expired lease over and finishes the
    shard (OUT/_SUCCESS); when the zombie's requests go through, its part upload (a conditional create)
    fails against the newcomer's part, its lease check stops it (exit 75): no unit is lost, not one
    byte of OUT changes, and a reader of OUT reads exactly the newcomer's rows."""
    name = f"zombie-{tmp_path.name}"
    out = f"s3://{BUCKET}/{name}"
    args = run_command(tiny_model, f"s3://{BUCKET}/cat", "--out", out, "--workers", 1, "--batch-size", 1,
                       "--part-rows", 2, "--lease-ttl", 3, "--max-error-rate", 1,
                       "--storage-option", "config_kwargs.read_timeout=300")  # fmt: skip
    denied.hold(rf"{name}/part-00001\.parquet$")
    zombie = subprocess.Popen(
        args, env=denied.s3.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: denied.hits["hold"] >= 1)  # passed check() for unit 1; its upload hangs
        denied.hold(rf"{name}/_lease\.json$")  # and so does its next renewal
        wait_for(lambda: denied.hits["hold"] >= 2)
        time.sleep(3 + 2.5)  # expired by the store's clock (second resolution)
        newcomer = subprocess.run(args, env=denied.s3.env, capture_output=True, text=True, timeout=300)
        assert newcomer.returncode == 0, newcomer.stderr
        assert "taking over the expired lease" in newcomer.stderr
        finished = denied.upstream.objects(BUCKET, f"{name}/")
        denied.release_holds()  # the zombie's part upload goes through now, then its next steps
        _, stderr = zombie.communicate(timeout=120)
        assert zombie.returncode == 75, stderr
        assert "lost the lease" in stderr, stderr
        stored = denied.upstream.objects(BUCKET, f"{name}/")
        log = json.loads(stored[f"{name}/_commits.json"])
        assert [p["unit"] for p in log["parts"]] == [0, 1, 2]  # no unit lost
        assert f"{name}/_SUCCESS" in stored and f"{name}/_lease.json" not in stored
        parts = sorted(key for key in stored if "/part-" in key)
        assert parts == [f"{name}/part-0000{unit}.parquet" for unit in range(3)]
        assert {key: stored[key] for key in parts} == {key: finished[key] for key in parts}  # not one byte
        read = pq.read_table(io.BytesIO(stored[f"{name}/part-00001.parquet"]))
        newcomers = pq.read_table(io.BytesIO(finished[f"{name}/part-00001.parquet"]))
        assert read.equals(newcomers)
        options = {"endpoint_url": denied.upstream.endpoint, "key": "testing", "secret": "testing"}
        ids = CommittedRows(out, options).dataset().to_table().column("id").to_pylist()
        assert len(ids) == len(set(ids)) == 6  # each image of the catalog once
    finally:
        denied.release_holds()
        with contextlib.suppress(ProcessLookupError):
            zombie.kill()
        zombie.wait(timeout=30)
