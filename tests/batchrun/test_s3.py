"""`skutag run` from s3:// to s3:// against a real S3-compatible server (moto_server on 127.0.0.1).

One row per object, bad objects as error rows, read back with DuckDB; SIGKILL and rerun;
the server paused longer than a request's timeout mid-run; secrets kept out of OUT.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.batchrun.support import skutag_in
from tests.support.inputs import write_awkward_inputs
from tests.support.s3server import S3Server

pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def model(tiny_model) -> Path:
    return tiny_model


@pytest.fixture(scope="module")
def catalog(s3: S3Server, small_catalog, tmp_path_factory) -> dict[str, str | None]:
    """s3://shop/catalog/: the small catalog plus every bad kind; key -> expected error kind."""
    awkward = tmp_path_factory.mktemp("awkward")
    expected = write_awkward_inputs(awkward)
    good = s3.upload_tree(small_catalog, "shop", "catalog")
    bad = s3.upload_tree(awkward, "shop", "catalog/awkward")
    kinds = {key.removeprefix("catalog/"): None for key in good}
    kinds.update({key.removeprefix("catalog/"): expected[key.rsplit("/", 1)[1]] for key in bad})
    return {k: v for k, v in kinds.items() if k.lower().endswith((".jpg", ".jpeg", ".png"))}


def out_rows(s3: S3Server, prefix: str) -> list[dict]:
    """OUT read as ONE dataset by pyarrow, as Spark or DuckDB would (`_`-files and `_plan/` ignored)."""
    import pyarrow.dataset as ds
    from pyarrow.fs import S3FileSystem

    fs = S3FileSystem(
        endpoint_override=s3.endpoint,
        scheme="http",
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
    )
    return ds.dataset(f"shop/{prefix}", filesystem=fs, format="parquet").to_table().to_pylist()


def test_s3_to_s3_gives_one_row_per_object_with_bad_objects_as_error_rows(s3, model, catalog):
    result = skutag_run(
        s3, str(model), "s3://shop/catalog", "--out", "s3://shop/out1", "--max-error-rate", "1"
    )
    assert result.returncode == 0, result.stderr
    rows = out_rows(s3, "out1")
    by_id = {row["id"]: row for row in rows}
    assert len(by_id) == len(rows) == len(catalog)
    for key, kind in catalog.items():
        row = by_id[key]
        assert row["uri"] == f"s3://shop/catalog/{key}"
        assert row["version"], "an S3 input's version is its ETag"
        if kind is None:
            assert row["status"] == "ok", (key, row["error"])
        else:
            assert (row["status"], row["error_kind"]) == ("error", kind), key
    names = {key.removeprefix("out1/") for key in s3.objects("shop", "out1/")}
    assert {"_SUCCESS", "_summary.json", "_commits.json", "_plan/_PLAN"} <= names
    summary = json.loads(s3.objects("shop", "out1/_summary.json")["out1/_summary.json"])
    assert summary["rows"] == len(catalog) and summary["errors"] == sum(
        k is not None for k in catalog.values()
    )


@pytest.mark.slow  # test_run.py kills a local run after its first part in the default run
def test_sigkill_during_an_s3_run_then_rerun_gives_exactly_one_row_per_object(s3, model, catalog, tmp_path):
    args = [str(model), "s3://shop/catalog", "--out", "s3://shop/out2", "--max-error-rate", "1",
            "--part-size", "16", "--batch-size", "4", "--workers", "1"]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "skutag", "run", *args, "--no-progress"],
        env=s3.env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while not _committed(s3, "out2") and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    committed = _committed(s3, "out2")
    assert committed and "out2/_SUCCESS" not in s3.objects("shop", "out2/_SUCCESS")
    again = skutag_run(s3, *args)
    assert again.returncode == 0, again.stderr
    rows = out_rows(s3, "out2")
    assert sorted(row["id"] for row in rows) == sorted(catalog)
    summary = json.loads(s3.objects("shop", "out2/_summary.json")["out2/_summary.json"])
    assert summary["resumed_rows"] == sum(p["rows"] for p in committed) > 0


def _committed(s3: S3Server, prefix: str) -> list[dict]:
    found = s3.objects("shop", f"{prefix}/_commits.json")
    if not found:
        return []
    return json.loads(next(iter(found.values())))["parts"]


@pytest.mark.slow  # minutes under load; test_s3_faults outlasts 503 SlowDown on every request by default
def test_a_paused_store_mid_run_loses_and_duplicates_nothing(s3, model, catalog):
    args = [str(model), "s3://shop/catalog", "--out", "s3://shop/out3", "--max-error-rate", "1",
            "--part-size", "16", "--batch-size", "4", "--workers", "1",
            "--storage-option", "config_kwargs.read_timeout=2", "--storage-option", "config_kwargs.connect_timeout=2"]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "skutag", "run", *args, "--no-progress"],
        env=s3.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while not _committed(s3, "out3") and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    s3.process.send_signal(signal.SIGSTOP)
    try:
        time.sleep(5)  # longer than a request's read timeout (2 s)
    finally:
        s3.process.send_signal(signal.SIGCONT)
    _, stderr = process.communicate(timeout=300)
    if process.returncode != 0:  # it gave up: then it said why in one line, and a rerun completes
        assert "Traceback" not in stderr and stderr.strip(), stderr
        rerun = skutag_run(s3, *args)
        assert rerun.returncode == 0, rerun.stderr
    rows = out_rows(s3, "out3")
    assert sorted(row["id"] for row in rows) == sorted(catalog)
    unreadable = [row["id"] for row in rows if row["error_kind"] == "unreadable"]
    if unreadable:  # reads that failed through every retry are retryable rows: --retry-errors redoes them
        retried = skutag_run(s3, *args, "--retry-errors")
        assert retried.returncode == 0, retried.stderr
        rows = out_rows(s3, "out3")
        assert sorted(row["id"] for row in rows) == sorted(catalog)
        assert not [row for row in rows if row["error_kind"] == "unreadable"]


def test_a_secret_storage_option_reaches_no_file_and_no_output_line(s3, model, catalog):
    secret = "Sup3rS3cretValue-do-not-log"
    env = {k: v for k, v in s3.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "skutag",
            "run",
            str(model),
            "s3://shop/catalog/awkward",
            "--out",
            "s3://shop/out4",
            "--max-error-rate",
            "1",
            "--no-progress",
            "--storage-option",
            "key=testing",
            "--storage-option",
            f"secret={secret}",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout and secret not in result.stderr
    files = s3.objects("shop", "out4/")
    assert any(key.endswith(".parquet") for key in files) and "out4/_SUCCESS" in files
    for key, data in files.items():
        assert secret.encode() not in data, key
    options = json.loads(files["out4/_summary.json"])["options"]["storage_options"]
    assert options == ["key", "secret"]  # recorded by name only


@pytest.mark.slow  # the slowest default test (a local and a Ray run on S3); each engine meets S3 or Ray by default
def test_the_ray_engine_reads_and_writes_s3_with_storage_options_reaching_its_workers(s3, model, catalog):
    """Credentials only as --storage-option (not in the environment Ray's workers inherit): the decode
    tasks read with them, the driver's writer commits with them; the local engine's rows come out."""
    pytest.importorskip("ray")
    from tests.batchrun.support import run_ray_cli

    env = {k: v for k, v in s3.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    credentials = ["--storage-option", "key=testing", "--storage-option", "secret=testing"]
    local = skutag_run(
        s3, str(model), "s3://shop/catalog", "--out", "s3://shop/ray-ref", "--max-error-rate", "1"
    )
    assert local.returncode == 0, local.stderr
    run_ray_cli(
        [sys.executable, "-m", "skutag", "run", str(model), "s3://shop/catalog", "--out", "s3://shop/ray-out",
         "--engine", "ray", "--max-error-rate", "1", "--no-progress", *credentials],
        env=env,
    )  # fmt: skip
    got = {r["id"]: r for r in out_rows(s3, "ray-out")}
    want = {r["id"]: r for r in out_rows(s3, "ray-ref")}
    assert got.keys() == want.keys() == set(catalog)
    for key, row in want.items():
        assert (got[key]["status"], got[key]["error_kind"], got[key]["label"]) == (
            row["status"], row["error_kind"], row["label"],
        ), key  # fmt: skip
    assert json.loads(s3.objects("shop", "ray-out/")["ray-out/_summary.json"])["engine"] == "ray"


def skutag_run(s3: S3Server, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return skutag_in(s3.env, "run", *args, "--no-progress", timeout=timeout)
