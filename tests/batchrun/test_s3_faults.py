"""`skutag plan` / `skutag run` on S3 under real faults, injected by `tests/support/faultproxy.py` in front of moto.

A prefix whose listing fails fails the plan (exit 75, one line naming it, nothing published);
a conditional PUT of `_PLAN` whose reply is lost after it landed still gives a working OUT;
a store answering `503 SlowDown` to everything for a while is outlasted by the retry budget,
and a budget set shorter than the throttle exits 75. A remote manifest's relative paths name
objects beside it.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.batchrun.support import skutag_in
from tests.support.s3server import S3Server

pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def catalog(s3: S3Server, small_catalog) -> str:
    """s3://shop/catalog/: 24 images of the small catalog in 4 class folders."""
    client = s3.client()
    for path in sorted(small_catalog.rglob("*.jpg"))[:24]:
        key = f"catalog/{path.relative_to(small_catalog).as_posix()}"
        client.put_object(Bucket="shop", Key=key, Body=path.read_bytes())
    return "s3://shop/catalog"


def skutag(server: S3Server, *args: object, budget: float | None = None, timeout: float = 300):
    env = dict(server.env)
    if budget is not None:
        env["SKUTAG_RETRY_BUDGET_S"] = str(budget)
    return skutag_in(env, *args, timeout=timeout)


# botocore's own retries off: a fault reaches skutag at once (the tests stay short).
NO_LIBRARY_RETRIES = ("--storage-option", "config_kwargs.retries.max_attempts=1")


def keys(s3: S3Server, prefix: str) -> list[str]:
    return sorted(s3.objects("shop", prefix))


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_prefix_whose_listing_fails_fails_with_exit_75_and_publishes_no_plan(
    s3, fault_proxy, catalog, tiny_model, command
):
    folder = sorted({key.split("/")[1] for key in keys(s3, "catalog/")})[1]
    fault_proxy.fail_listing(f"catalog/{folder}/")
    out = f"s3://shop/listfail-{command}"
    args = ("plan", catalog) if command == "plan" else ("run", tiny_model, catalog, "--no-progress")
    result = skutag(fault_proxy.s3, *args, "--out", out, *NO_LIBRARY_RETRIES, budget=0)
    assert result.returncode == 75, result.stderr
    assert f"{catalog}/{folder}/" in one_line(result)
    assert fault_proxy.hits["fail_listing"] >= 1
    assert keys(s3, f"listfail-{command}/") == []  # no _PLAN, no unit file, nothing


@pytest.mark.slow  # end to end; test_an_exclusive_create_whose_reply_is_lost_knows_its_own_write covers it by default
def test_a_plan_create_whose_reply_is_lost_after_it_landed_gives_a_working_out(
    s3, fault_proxy, catalog, tiny_model
):
    fault_proxy.drop_put_reply("shop/lostreply/_plan/_PLAN")
    first = skutag(
        fault_proxy.s3, "run", tiny_model, catalog, "--out", "s3://shop/lostreply", "--no-progress"
    )
    assert first.returncode == 0, first.stderr
    assert fault_proxy.hits["drop_put_reply"] == 1
    plan = json.loads(s3.objects("shop", "lostreply/_plan/_PLAN")["lostreply/_plan/_PLAN"])
    present = set(keys(s3, "lostreply/_plan/"))
    assert {f"lostreply/_plan/{unit['file']}" for unit in plan["units"]} <= present
    again = skutag(
        fault_proxy.s3, "run", tiny_model, catalog, "--out", "s3://shop/lostreply", "--no-progress"
    )
    assert again.returncode == 0, again.stderr
    since = skutag(
        fault_proxy.s3, "run", tiny_model, catalog, "--out", "s3://shop/lostreply-2",
        "--since", "s3://shop/lostreply", "--no-progress",
    )  # fmt: skip
    assert since.returncode == 0, since.stderr
    summary = json.loads(s3.objects("shop", "lostreply-2/_summary.json")["lostreply-2/_summary.json"])
    assert summary["reused"] == summary["rows"] == 24


def slowdown_run(s3, proxy, catalog, model, window: float, name: str):
    planned = skutag(proxy.s3, "plan", catalog, "--out", f"s3://shop/{name}")
    assert planned.returncode == 0, planned.stderr
    proxy.slow_down(window)
    started = time.monotonic()
    result = skutag(
        proxy.s3,
        "run",
        model,
        catalog,
        "--out",
        f"s3://shop/{name}",
        "--no-progress",
        "--max-error-rate",
        "0",
        *NO_LIBRARY_RETRIES,  # only skutag's own schedule outlasts the throttle
    )
    return result, time.monotonic() - started


@pytest.mark.parametrize(
    "window", [pytest.param(4.0, id="4s"), pytest.param(20.0, id="20s", marks=pytest.mark.slow)]
)
def test_a_run_outlasts_503_slowdown_on_every_request(s3, fault_proxy, catalog, tiny_model, window):
    result, took = slowdown_run(s3, fault_proxy, catalog, tiny_model, window, f"slow-{window:g}")
    assert result.returncode == 0, result.stderr
    assert took >= window and fault_proxy.hits["slow_down"] >= 1
    summary = json.loads(
        s3.objects("shop", f"slow-{window:g}/_summary.json")[f"slow-{window:g}/_summary.json"]
    )
    assert summary["ok"] == summary["rows"] == 24


@pytest.mark.slow  # 38 s of waiting; test_skutag_own_retries_outlast_a_throttle_and_stop_at_the_budget covers the budget by default
def test_a_retry_budget_shorter_than_the_throttle_exits_75(s3, fault_proxy, catalog, tiny_model):
    fault_proxy.slow_down(600)
    result = skutag(
        fault_proxy.s3,
        "run",
        tiny_model,
        catalog,
        "--out",
        "s3://shop/slow-budget",
        "--no-progress",
        budget=0,
    )
    fault_proxy.clear()
    assert result.returncode == 75, result.stderr
    assert "retry budget" in one_line(result)
    assert keys(s3, "slow-budget/") == []


def test_a_remote_manifest_names_objects_beside_it(s3, tmp_path, monkeypatch):
    from skutag.listing import ListingCounts, list_sources

    client = s3.client()
    client.put_object(Bucket="shop", Key="feed/images/a.jpg", Body=b"a")
    client.put_object(Bucket="shop", Key="feed/b.jpg", Body=b"b")
    manifest = "id,path\nsku-a,images/a.jpg\nsku-b,./b.jpg\nsku-c,s3://shop/feed/images/a.jpg\n"
    client.put_object(Bucket="shop", Key="feed/manifest.csv", Body=manifest.encode())
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"a local file of the same name must not be used")
    monkeypatch.chdir(tmp_path)
    options = {"endpoint_url": s3.endpoint, "key": "testing", "secret": "testing"}
    entries = list(list_sources(["s3://shop/feed/manifest.csv"], ListingCounts(), options))
    assert [(e.id, e.uri) for e in entries] == [
        ("sku-a", "s3://shop/feed/images/a.jpg"),
        ("sku-b", "s3://shop/feed/b.jpg"),
        ("sku-c", "s3://shop/feed/images/a.jpg"),
    ]
    etag = client.head_object(Bucket="shop", Key="feed/images/a.jpg")["ETag"].strip('"')
    assert entries[0].version == entries[2].version == etag and entries[0].size == 1


def test_listing_a_prefix_does_not_serve_a_stale_cached_listing(s3):
    from skutag.listing import ListingCounts, list_sources

    client = s3.client()
    client.put_object(Bucket="shop", Key="grow/a.jpg", Body=b"a")
    options = {"endpoint_url": s3.endpoint, "key": "testing", "secret": "testing"}
    assert [e.id for e in list_sources(["s3://shop/grow"], ListingCounts(), options)] == ["a.jpg"]
    client.put_object(Bucket="shop", Key="grow/b.jpg", Body=b"b")
    assert [e.id for e in list_sources(["s3://shop/grow"], ListingCounts(), options)] == ["a.jpg", "b.jpg"]


def test_an_exclusive_create_whose_reply_is_lost_knows_its_own_write(s3, fault_proxy):
    from skutag import storage

    options = {"endpoint_url": fault_proxy.endpoint, "key": "testing", "secret": "testing"}
    fault_proxy.drop_put_reply("shop/excl/_PLAN")
    assert storage.create_exclusive("s3://shop/excl/_PLAN", b"mine", options)  # landed, reply lost, 412
    assert fault_proxy.hits["drop_put_reply"] == 1
    assert not storage.create_exclusive("s3://shop/excl/_PLAN", b"theirs", options)  # a real race lost
    assert s3.objects("shop", "excl/") == {"excl/_PLAN": b"mine"}


def test_skutag_own_retries_outlast_a_throttle_and_stop_at_the_budget(s3, fault_proxy):
    """botocore's retries off: only skutag's schedule stands between a SlowDown and a failed write."""
    from skutag import storage

    options = {
        "endpoint_url": fault_proxy.endpoint, "key": "testing", "secret": "testing",
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }  # fmt: skip
    fault_proxy.slow_down(6)
    started = time.monotonic()
    storage.write_bytes("s3://shop/throttled/part", b"x", options)
    assert time.monotonic() - started >= 6 and fault_proxy.hits["slow_down"] >= 2
    fault_proxy.slow_down(60)
    started = time.monotonic()
    with pytest.raises(storage.StoreUnavailable, match="retry budget"):
        storage.write_bytes("s3://shop/throttled/part", b"y", {**options, "retry_budget_s": 2})
    assert time.monotonic() - started < 30
    assert s3.objects("shop", "throttled/") == {"throttled/part": b"x"}


def test_bucket_gone_says_gone_only_for_a_missing_bucket_and_never_for_an_outage(s3, fault_proxy):
    """The guard's last word before exit 4 "missing bucket": a deleted bucket is gone, a live one is not,
    and a store that answers 503 to everything is an outage (StoreUnavailable, exit 75), not a
    missing bucket (fsspec's `exists()` would have said False)."""
    from skutag.batchrun.commit.guard import bucket_gone

    from skutag.retries import StoreUnavailable

    client = s3.client()
    client.create_bucket(Bucket="gone-soon")
    client.delete_bucket(Bucket="gone-soon")
    options = {
        "endpoint_url": fault_proxy.endpoint, "key": "testing", "secret": "testing", "retry_budget_s": 1,
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }  # fmt: skip
    assert bucket_gone("s3://shop", options) is False
    assert bucket_gone("s3://gone-soon", options) is True
    fault_proxy.slow_down(30)  # every request answers 503 SlowDown
    with pytest.raises(StoreUnavailable):
        bucket_gone("s3://shop", options)
    assert fault_proxy.hits["slow_down"] >= 1
