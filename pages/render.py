"""Render the pages' Jinja2 templates (shipped as package data in pages/templates/), and write the report:
OUT/_report/index.html, report.json and thumbs/, a static page that opens from a file or an object
store without a server (every link relative, no script)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from skutag import storage
from skutag.extras import require

from .report import DEFAULT_LIMITS, Limits, build_report
from .thumbs import MAX_THUMBS, write_thumbs

TEMPLATES = Path(__file__).parent / "templates"
REPORT_DIR = "_report"


def environment():
    jinja2 = require("jinja2", "pages", "the report and review pages")
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, trim_blocks=True, lstrip_blocks=True
    )


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def write_report(
    out: str,
    since: str | None = None,
    storage_options: dict[str, Any] | None = None,
    max_thumbs: int = MAX_THUMBS,
    limits: Limits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """Build, thumbnail and write the report of OUT; returns report.json's content."""
    environment()  # a missing `pages` extra fails before any work
    report = build_report(out, since, storage_options, limits)
    report_dir = storage.join(out, REPORT_DIR)
    storage.makedirs(report_dir)
    write_thumbs(report, report_dir, storage_options, max_thumbs)
    body = json.dumps(report, indent=1, sort_keys=True, default=str).encode()
    storage.write_bytes(storage.join(report_dir, "report.json"), body, storage_options)
    page = render("report.html", r=report, rows=report["rows"])
    storage.write_bytes(storage.join(report_dir, "index.html"), page.encode(), storage_options)
    return report
