"""An outage is an outage: an image host that answers 503 to everything stops the run with exit 75
within about one retry budget, publishing nothing as complete; a 429 with Retry-After is waited out;
at most `max_per_host` reads hit one host at once. A real HTTP server (tests/support/imagehost.py)
and real `skutag run` processes."""

from __future__ import annotations

import json
import os
import time

import pytest

from skutag.retries import BACKOFF_S
from tests.batchrun.support import skutag_in
from tests.support.imagehost import ImageHost

URLS = 40


@pytest.fixture
def host(six_images):
    photos = sorted(six_images.rglob("*.jpg"))
    images = {f"p{i:03d}.jpg": photos[i % len(photos)].read_bytes() for i in range(URLS)}
    with ImageHost(images) as server:
        yield server


def url_list(host: ImageHost, tmp_path) -> str:
    path = tmp_path / "urls.txt"
    path.write_text("".join(host.url(name) + "\n" for name in sorted(host.images)))
    return str(path)


def run(tiny_model, urls, out, *extra, budget: float = 3, **env):
    environ = {**os.environ, "SKUTAG_RETRY_BUDGET_S": str(budget), **env}
    return skutag_in(environ, "run", tiny_model, urls, "--out", out, "--no-progress", "--workers", 2, *extra,
                     timeout=300)  # fmt: skip


def test_a_host_down_all_night_stops_with_exit_75_within_the_budget(tiny_model, host, tmp_path):
    urls = url_list(host, tmp_path)
    host.down = True
    out, metrics = tmp_path / "out", tmp_path / "m.prom"
    started = time.monotonic()
    result = run(tiny_model, urls, out, "--metrics-file", metrics, budget=3)
    took = time.monotonic() - started
    assert result.returncode == 75, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("WARNING")]
    assert len(lines) == 1 and "127.0.0.1" in lines[0] and "retry budget" in lines[0], result.stderr
    assert took < 3 * 2 + 20, took  # one budget per worker, plus start-up; not 40 budgets
    assert not (out / "_SUCCESS").exists() and not list(out.glob("part-*"))
    assert "skutag_run_exit_code" in metrics.read_text() and " 75.0" in metrics.read_text()
    host.down = False
    again = run(tiny_model, urls, out, budget=3)
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "_summary.json").read_text())["ok"] == URLS


def test_429_with_retry_after_on_the_first_get_of_every_url_is_waited_out(tiny_model, host, tmp_path):
    """12 URLs in two units, each first GET answered 429 with `Retry-After: 0.4`: longer than the first
    jittered pause can be (skutag.retries.BACKOFF_S, 0.25 s), so every gap of 0.38 s or more is the
    server's word honoured (1 s on 40 URLs waited 20 s for nothing more)."""
    host.throttle_first = 0.4
    assert host.throttle_first - 0.02 > BACKOFF_S  # no first pause of the jitter reaches it
    out = tmp_path / "out"
    urls = tmp_path / "urls.txt"
    names = sorted(host.images)[:12]
    urls.write_text("".join(host.url(name) + "\n" for name in names))
    result = run(tiny_model, urls, out, "--part-rows", 10, budget=30)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["ok"] == summary["rows"] == len(names)
    assert sorted(host.gets) == names
    for name, times in host.gets.items():
        assert len(times) == 2, name
        assert times[1] - times[0] >= 0.38, (name, times)


def test_at_most_max_per_host_reads_hit_one_host_at_once(tiny_model, host, tmp_path):
    host.delay_s = 0.15
    out = tmp_path / "out"
    result = run(
        tiny_model, url_list(host, tmp_path), out, "--batch-size", 4, "--storage-option", "max_per_host=1"
    )
    assert result.returncode == 0, result.stderr
    assert host.peak == 1
    assert json.loads((out / "_summary.json").read_text())["ok"] == URLS
