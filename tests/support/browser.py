"""A real headless Chromium for the pages' tests (Debian's `chromium` + `chromium-driver`, driven by Selenium).

Tests marked `browser` run where both are installed; elsewhere they are deselected and the run
ends with one line saying so (`make test` on a machine without Chromium).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator

_SKIPPED = "_skutag_browser_skipped"


def chromium() -> tuple[str, str] | None:
    """(browser, driver) executables, or None when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def deselect_without_chromium(config, items: list) -> None:
    if chromium() is not None:
        return
    browser = [item for item in items if "browser" in item.keywords]
    if not browser:
        return
    items[:] = [item for item in items if "browser" not in item.keywords]
    config.hook.pytest_deselected(items=browser)
    setattr(config, _SKIPPED, len(browser))


def skipped_line(config) -> str | None:
    count = getattr(config, _SKIPPED, 0)
    if not count:
        return None
    return (
        f"skipped {count} browser test{'s' if count != 1 else ''}: Chromium is absent "
        "(apt-get install -y chromium chromium-driver to run them)"
    )


@contextlib.contextmanager
def headless_chromium(width: int = 1280, height: int = 1000) -> Iterator:
    """A Selenium WebDriver on a headless Chromium; quit (browser and driver stopped) after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={width},{height}", "--allow-file-access-from-files"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
