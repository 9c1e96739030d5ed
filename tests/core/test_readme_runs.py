"""The README's examples on the demo photos run as written: every fenced `sh` block of README.md that
uses `demo/photos`, and every one of docs/first-hour.md, is executed with bash, in order, in a fresh folder where
`demo/` is the repository's and `skutag` is this interpreter's CLI. A renamed option, a changed
default or a command that stopped working fails here, not in a newcomer's first hour.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "README.md", ROOT / "docs" / "first-hour.md"]


def demo_blocks(path: Path) -> list[str]:
    """The fenced `sh` blocks of `path` to run, in document order: the README's that use the demo photos;
    every one of docs/first-hour.md (the whole page is one chain on them)."""
    blocks = re.findall(r"```sh\n(.*?)```", path.read_text(), re.S)
    return blocks if path.name == "first-hour.md" else [b for b in blocks if "demo/photos" in b]


def test_the_readme_and_the_first_hour_have_demo_examples():
    for path in SOURCES:
        assert demo_blocks(path), f"{path.name} has no sh block on demo/photos"


@pytest.mark.slow  # trains a real model on the demo photos (minutes on 2 cores)
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_the_demo_examples_run_as_written(source, tmp_path):
    (tmp_path / "demo").symlink_to(ROOT / "demo")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "skutag"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m skutag "$@"\n')
    wrapper.chmod(0o755)
    python = bin_dir / "python"  # a script, not a link: a linked venv interpreter loses its venv
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for block in demo_blocks(source):
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=1800,
        )  # fmt: skip
        assert result.returncode == 0, (
            f"{source.name}:\n{block}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        )
