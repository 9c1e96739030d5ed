"""The docs cannot drift from the repository: links resolve, and every `skutag` example parses.

Each `skutag ...` line of a shell block in README.md and docs/*.md is parsed by the real click
command it names (paths are not checked for existence: the examples name a user's files), so a
renamed option or command fails here before a reader meets it.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import shlex
from pathlib import Path

import click
import pytest

from skutag.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def examples() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        for block in re.findall(r"```(?:sh|bash)?\n(.*?)```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].strip()
                if re.match(r"^(torchrun .*-m )?skutag \w", line):
                    found.append((path.name, line))
    return found


def test_every_relative_link_resolves():
    broken = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+://", target) or target.startswith("#"):
                continue
            resolved = (path.parent / target.split("#")[0]).resolve()
            if not resolved.exists() or not resolved.is_relative_to(ROOT):
                broken.append(f"{path.name} -> {target}")
    assert not broken


def test_the_docs_show_every_command():
    shown = {re.search(r"skutag (\w+)", line).group(1) for _, line in examples()}
    assert set(COMMANDS) <= shown, set(COMMANDS) - shown


@pytest.mark.parametrize(("doc", "line"), examples())
def test_each_example_parses_with_the_real_command(doc, line, monkeypatch):
    monkeypatch.setattr(click.types.Path, "convert", lambda self, value, param, ctx: value)
    name, rest = re.search(r"skutag (\w+)(.*)", line).groups()
    assert name in COMMANDS, f"{doc}: no command {name}"
    module, attr = COMMANDS[name][0].split(":")
    command = getattr(importlib.import_module(module), attr)
    args = shlex.split(rest.replace("$JOB_COMPLETION_INDEX", "0"))
    with contextlib.suppress(click.exceptions.Exit):  # --help
        command.make_context(name, args)
