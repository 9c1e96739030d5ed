"""Helpers the batchrun tests share, written once: tiny catalogs, reading OUT, its commit log, the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import duckdb
import numpy as np
from skutag.batchrun.api import run_catalog
from skutag.batchrun.commit.reader import CommittedRows
from skutag.batchrun.decode.loader import Sample
from skutag.batchrun.options import RunOptions
from skutag.batchrun.plan.shard import Shard

from skutag.synth import SynthSpec, make_catalog

SPEC = SynthSpec(count=20, classes=4, min_size=48, max_size=64, seed=3)  # a small night's catalog


def tiny_catalog(
    root: Path, count: int, seed: int, *, classes: int = 4, min_size: int = 48, max_size: int = 64
) -> Path:
    """`count` synthetic images under `root` (made if missing), in `classes` class folders."""
    make_catalog(
        root, SynthSpec(count=count, classes=classes, min_size=min_size, max_size=max_size, seed=seed)
    )
    return root


def read_rows(out: Path, pattern: str = "*.parquet", *, unique: bool = True) -> dict[str, dict]:
    """OUT's parts as a glob reads them (as DuckDB or Spark would), id -> row; `unique`: no id twice."""
    rows = duckdb.sql(f"SELECT * FROM '{out}/{pattern}'").to_arrow_table().to_pylist()
    by_id = {row["id"]: row for row in rows}
    if unique:
        assert len(by_id) == len(rows), "duplicate ids"
    return by_id


def committed_rows(out: Path | str, columns: list[str] | None = None) -> dict[str, dict]:
    """OUT's committed rows through the one reader (`commit.reader.CommittedRows`), id -> row."""
    table = CommittedRows(str(out)).dataset().to_table(columns=columns)
    rows = table.to_pylist()
    assert len({r["id"] for r in rows}) == len(rows)
    return {r["id"]: r for r in rows}


def committed_parts(out: Path, log: str = "_commits.json") -> list[dict]:
    """The entries of OUT's commit log as stored; [] while there is none (or it is being replaced)."""
    try:
        return json.loads((out / log).read_text())["parts"]
    except (OSError, ValueError, KeyError):
        return []


def run(model, sources, out, *, foreign=None, shard: str = "0/1", **options):
    """run_catalog with RunOptions built from keywords (as the CLI builds them from flags)."""
    options = RunOptions(shard=Shard.parse(shard), **options)
    return run_catalog(model, [str(s) for s in sources], out, options, foreign=foreign)


def run_command(model, *args: object) -> list[str]:
    """The argv of `skutag run MODEL ARGS... --no-progress` in a fresh interpreter."""
    return [sys.executable, "-m", "skutag", "run", str(model), *map(str, args), "--no-progress"]


def skutag_in(env: dict[str, str], *args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m skutag ARGS...` with environment `env`, capturing text output; never raises on exit."""
    return subprocess.run(
        [sys.executable, "-m", "skutag", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def sample(index: int, ok: bool, size: int = 4) -> Sample:
    pixels = np.full((size, size, 3), index + 1, np.uint8) if ok else None
    kind, error = (None, None) if ok else ("truncated", "cut short")
    return Sample(index, pixels, kind, error, 10 if ok else None, 20 if ok else None, 99, "ab", 0.5)


# -- the processes of a Ray run ----------------------------------------------------------------


class Tag:
    """The processes one test starts: an environment variable they inherit and Ray's temp dir (RAY_TMPDIR).

    Ray workers and agents overwrite their command line and environment block with their process
    title, so those are found by the files they hold open under the temp dir (their logs, sockets).
    """

    VARIABLE = "SKUTAG_TEST_RAY"

    def __init__(self) -> None:
        self.mark = uuid.uuid4().hex
        self.temp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths stay < 108 bytes

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, self.VARIABLE: self.mark, "RAY_TMPDIR": self.temp,
                "SKUTAG_RAY_NO_PROGRESS_S": "240", **extra}  # fmt: skip

    def pids(self) -> list[int]:
        """Live (non-zombie) processes of this tag, this process excluded."""
        needle = f"{self.VARIABLE}={self.mark}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
                mine = needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0") or self.temp in (
                    command_line(int(entry)) + " ".join(_links(int(entry)))
                )
            except OSError:
                continue
            if mine and state != "Z":
                found.append(int(entry))
        return found

    def kill(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.temp, ignore_errors=True)

    def wait_gone(self, seconds: float = 30) -> list[str]:
        """Command lines of this tag's processes still alive after `seconds`."""
        deadline = time.monotonic() + seconds
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        return [command_line(pid) for pid in self.pids()]


def _links(pid: int) -> list[str]:
    links = []
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return links


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run_ray_cli(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a `skutag run --engine ray` command line to success under a fresh Tag; check that none of
    its processes outlive it (and stop them if they do)."""
    tag = Tag()
    try:
        result = subprocess.run(
            command, env=tag.env(**(env or {})), capture_output=True, text=True, timeout=600
        )
        left = tag.wait_gone()
    finally:
        tag.close()
    assert result.returncode == 0, result.stderr
    assert not left, f"processes of the run survived it: {left}"
    return result
