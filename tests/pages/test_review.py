"""`skutag review`: a real server (a subprocess on 127.0.0.1) driven by a real headless Chromium; decisions on
disk at once (also after SIGKILL), a restart skips them, and only the queue's own photos are served."""

from __future__ import annotations

import http.client
import json
import shutil
import time
import urllib.request
from urllib.parse import urlsplit

import pytest

from skutag.decisions import read_decisions
from tests.support.browser import headless_chromium

from .support import SCREENSHOTS, kill_hard, review_server


@pytest.fixture
def out(nights, tmp_path):
    copy = tmp_path / "tonight"
    shutil.copytree(nights[1], copy)
    return copy


def queue(url: str) -> dict:
    with urllib.request.urlopen(url + "api/queue") as answer:
        return json.load(answer)


def wait_decided(out, count: int, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        decided = read_decisions(str(out)).to_pylist()
        if len(decided) >= count or time.monotonic() > deadline:
            return {d["id"]: d for d in decided}
        time.sleep(0.1)


def shown_id(browser) -> str:
    return browser.find_element("id", "item").get_attribute("data-id")


def wait_photo(browser) -> None:
    deadline = time.monotonic() + 10
    while not browser.execute_script(
        "const i = document.getElementById('photo'); return i.complete && i.naturalWidth > 0"
    ):
        assert time.monotonic() < deadline, "the photo did not load"
        time.sleep(0.05)


@pytest.mark.browser
def test_rows_are_accepted_and_corrected_by_keyboard_and_by_click(out):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    with review_server(out) as (_process, url), headless_chromium() as browser:
        pending = queue(url)
        classes, rows = pending["classes"], {r["id"]: r for r in pending["rows"]}
        assert urlsplit(url).hostname == "127.0.0.1" and len(rows) > 4
        browser.get(url)
        wait_photo(browser)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOTS / "review.png"))
        keys = ActionChains(browser)

        first = shown_id(browser)
        keys.send_keys(Keys.ENTER).perform()  # accept by keyboard
        wait_decided(out, 1)
        second = shown_id(browser)
        assert second != first
        other = next(i for i, c in enumerate(classes) if c != rows[second]["label"])
        keys.send_keys(str(other + 1)).perform()  # correct by keyboard: the label's number
        wait_decided(out, 2)
        third = shown_id(browser)
        wrong = next(c for c in classes if c != rows[third]["label"])
        browser.find_element(
            "css selector", f"#labels button[data-label='{wrong}']"
        ).click()  # correct by click
        wait_decided(out, 3)
        fourth = shown_id(browser)
        browser.find_element("id", "accept").click()  # accept by click
        wait_decided(out, 4)
        fifth = shown_id(browser)
        keys.send_keys("n").perform()  # not a product
        decided = wait_decided(out, 5)

    assert decided[first]["decision"] == "accept" and decided[first]["decided_label"] == rows[first]["label"]
    assert decided[second]["decision"] == "correct" and decided[second]["decided_label"] == classes[other]
    assert decided[third]["decision"] == "correct" and decided[third]["decided_label"] == wrong
    assert decided[fourth]["decision"] == "accept"
    assert decided[fifth]["decision"] == "not_product" and decided[fifth]["decided_label"] is None
    for row_id, d in decided.items():
        assert (d["uri"], d["sha256"], d["predicted_label"]) == (
            rows[row_id]["uri"],
            rows[row_id]["sha256"],
            rows[row_id]["label"],
        )
        assert d["who"] == "tester" and d["decided_at"] is not None


@pytest.mark.browser
def test_decisions_survive_a_killed_server_and_a_restart_skips_them(out):
    from selenium.webdriver.common.action_chains import ActionChains

    with review_server(out) as (process, url), headless_chromium() as browser:
        total = len(queue(url)["rows"])
        browser.get(url)
        wait_photo(browser)
        decided_ids = []
        for _ in range(3):
            decided_ids.append(shown_id(browser))
            ActionChains(browser).send_keys("a").perform()
            wait_decided(out, len(decided_ids))
        kill_hard(process)  # mid-review: the person is looking at the fourth row
    assert set(wait_decided(out, 3)) == set(decided_ids)
    assert len(list((out / "_review").glob("decision-*.parquet"))) == 3

    with review_server(out) as (_process, url), headless_chromium() as browser:
        pending = queue(url)
        assert len(pending["rows"]) == total - 3 and pending["decided_before"] == 3
        assert not set(decided_ids) & {r["id"] for r in pending["rows"]}
        browser.get(url)
        wait_photo(browser)
        assert shown_id(browser) not in decided_ids
        assert f"{total - 3} left, 3 decided" in browser.find_element("id", "status").text


def raw_get(url: str, path: str) -> int:
    """GET `path` exactly as written (no client-side normalisation of `..`)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        answer.read()
        return answer.status
    finally:
        connection.close()


def test_only_the_queues_own_photos_are_served(out):
    with review_server(out) as (_process, url):
        rows = queue(url)["rows"]
        assert raw_get(url, "/image/" + rows[0]["id"]) == 200
        uri = rows[0]["uri"]
        for path in [
            "/image/../../../../etc/passwd",
            "/image/..%2f..%2f..%2f..%2fetc%2fpasswd",
            "/image/%2e%2e/%2e%2e/etc/passwd",
            "/image//etc/passwd",
            "/image/" + uri,  # the file's own path is not an id
            "/image/" + rows[0]["id"] + "/../../_commits.json",
            "/image/_commits.json",
        ]:
            assert raw_get(url, path) == 404, path


def test_a_decision_on_an_unknown_row_or_label_is_refused(out):
    with review_server(out) as (_process, url):
        row = queue(url)["rows"][0]

        def post(body: dict) -> int:
            request = urllib.request.Request(url + "api/decide", json.dumps(body).encode(), method="POST")
            try:
                with urllib.request.urlopen(request) as answer:
                    return answer.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert post({"id": "../etc/passwd", "decision": "accept", "label": "hat"}) == 404
        assert post({"id": row["id"], "decision": "label", "label": "no such label"}) == 400
        assert read_decisions(str(out)).num_rows == 0
        assert post({"id": row["id"], "decision": "accept", "label": row["label"]}) == 200
        assert post({"id": row["id"], "decision": "accept", "label": row["label"]}) == 404  # decided already
        assert read_decisions(str(out)).num_rows == 1


def test_an_out_without_review_columns_is_one_line(tmp_path, tiny_model, small_catalog):
    from tests.support.cli import skutag

    out = tmp_path / "out"
    assert skutag("run", tiny_model, small_catalog, "--out", out).returncode == 0
    result = skutag("review", out)
    assert result.returncode == 2 and "no review columns" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_taken_port_is_one_line(out):
    import socket

    from tests.support.cli import skutag

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = skutag("review", out, "--port", taken.getsockname()[1])
    assert result.returncode == 2 and "cannot listen on 127.0.0.1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
