"""The README's examples on the demo photos run as written, in the default test run.

docs/first-hour.md is the transcript of the README's first hour: every command of the README's `sh`
blocks that use `demo/photos` is one of its commands, in the same order (checked here, so the two
cannot drift apart). The default test executes the chain once, for real: every command of
docs/first-hour.md's `sh` blocks in document order, then any README demo command the page does not
have, each with bash in one fresh folder where `demo/` is the repository's and `skutag` and
`python` are this interpreter's. A command already run there as the same text is not run twice (the
README's block repeats the page's), so one model is trained for both documents. A renamed option,
a changed default or a command that stopped working fails here, not in a newcomer's first hour.

The slow test runs the README's demo blocks alone in a fresh folder as well: its chain stands on its
own, without the page's extra steps.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FIRST_HOUR = ROOT / "docs" / "first-hour.md"
COMMAND_TIMEOUT_S = 1800


def demo_blocks(path: Path) -> list[str]:
    """The fenced `sh` blocks of `path` to run, in document order: the README's that use the demo photos;
    every one of docs/first-hour.md (the whole page is one chain on them)."""
    blocks = re.findall(r"```sh\n(.*?)```", path.read_text(), re.S)
    return blocks if path == FIRST_HOUR else [b for b in blocks if "demo/photos" in b]


def commands(blocks: list[str]) -> list[str]:
    """The commands of `blocks`, one per logical line (backslash continuations joined), without blanks and
    comment lines."""
    lines = [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def same(command: str) -> str:
    """`command` for comparing: runs of spaces as one (the shell reads them alike outside quotes)."""
    return " ".join(command.split())


def test_the_readme_and_the_first_hour_have_demo_examples():
    for path in (README, FIRST_HOUR):
        assert demo_blocks(path), f"{path.name} has no sh block on demo/photos"


def test_the_first_hour_page_is_the_readmes_first_hour():
    """The README says docs/first-hour.md shows the real output of its commands: every README demo command
    is on the page, in the README's order."""
    page = [same(c) for c in commands(demo_blocks(FIRST_HOUR))]
    position = -1
    for command in map(same, commands(demo_blocks(README))):
        assert command in page[position + 1 :], (
            f"README.md's demo command is not in docs/first-hour.md (after the previous one):\n{command}"
        )
        position = page.index(command, position + 1)


def shell_env(folder: Path) -> dict[str, str]:
    """PATH with `skutag` and `python` as this interpreter's, for commands run in `folder`."""
    (folder / "demo").symlink_to(ROOT / "demo")
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "skutag"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m skutag "$@"\n')
    wrapper.chmod(0o755)
    python = bin_dir / "python"  # a script, not a link: a linked venv interpreter loses its venv
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def run_chain(folder: Path, chain: list[tuple[str, str]]) -> list[str]:
    """Run each (source, command) in `folder`, in order, skipping a command already run there as the same
    text; assert each exits 0. Returns one line per command with its time."""
    env = shell_env(folder)
    done: set[str] = set()
    timings = []
    for source, command in chain:
        if same(command) in done:
            timings.append(f"{source}: already run: {command}")
            continue
        start = time.monotonic()
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command], cwd=folder, env=env, capture_output=True, text=True,
            timeout=COMMAND_TIMEOUT_S,
        )  # fmt: skip
        timings.append(f"{source}: {time.monotonic() - start:.1f} s: {command}")
        assert result.returncode == 0, (
            f"{source}: exit {result.returncode}:\n{command}\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}\n" + "\n".join(timings)
        )
        done.add(same(command))
    print("\n".join(timings))  # with -s or -rP: where the time went
    return timings


def test_the_first_hour_runs_as_written(tmp_path):
    """Every command of docs/first-hour.md, then the README's demo commands (already run: the page has
    them), once each, in one folder. Minutes of training: the one model of both documents."""
    chain = [("docs/first-hour.md", c) for c in commands(demo_blocks(FIRST_HOUR))]
    chain += [("README.md", c) for c in commands(demo_blocks(README))]
    run_chain(tmp_path, chain)


@pytest.mark.slow  # trains a second model on the demo photos
def test_the_readme_demo_runs_on_its_own(tmp_path):
    run_chain(tmp_path, [("README.md", c) for c in commands(demo_blocks(README))])
