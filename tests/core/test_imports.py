"""A command imports what it uses: listing, searching an index, help and a night with nothing to
decode never load torch or ONNX Runtime (about a second and 700 MB each time they start).

Each command runs in a fresh interpreter through the real CLI entry point; at exit it writes
the names in `sys.modules`, so a module-level `import torch` added anywhere on the path of one
of these commands fails its test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from skutag.batchrun.api import run_catalog
from skutag.batchrun.options import RunOptions

HEAVY = {"torch", "onnxruntime"}
ROOT = Path(__file__).resolve().parents[2]
RUNNER = (
    "import atexit, json, os, sys\n"
    "path = os.environ['SKUTAG_MODULES_OUT']\n"
    "atexit.register(lambda: open(path, 'w').write(json.dumps(sorted(sys.modules))))\n"
    "from skutag.cli import main\n"
    "main(sys.argv[1:])\n"
)


def imported(
    tmp_path: Path, *args: object, code: str = RUNNER, env: dict[str, str] | None = None
) -> tuple[set[str], subprocess.CompletedProcess]:
    """The modules a fresh `skutag ARGS...` process had loaded when it exited."""
    target = tmp_path / "modules.json"
    env = {**os.environ, **(env or {}), "SKUTAG_MODULES_OUT": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return set(json.loads(target.read_text())), result


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in HEAVY}


@pytest.mark.parametrize("args", [["--help"], ["plan", "--help"], ["run", "--help"], ["similar", "--help"]])
def test_help_imports_neither_torch_nor_onnxruntime(tmp_path, args):
    modules, result = imported(tmp_path, *args)
    assert "Usage" in result.stdout
    assert not heavy(modules), heavy(modules)


def test_plan_imports_neither_torch_nor_onnxruntime(tmp_path, small_catalog):
    modules, result = imported(tmp_path, "plan", small_catalog, "--out", tmp_path / "out")
    assert (tmp_path / "out" / "_plan" / "_PLAN").exists(), result.stderr
    assert "skutag.batchrun.plan.catalog" in modules  # the check ran the command, not just its help
    assert not heavy(modules), heavy(modules)
    assert not {m for m in modules if m.split(".")[0] == "pandas"}  # pyarrow's probe (batchrun.arrow)


@pytest.mark.parametrize("model", ["tiny_model", "review_model"])
def test_a_since_night_with_nothing_to_decode_imports_neither(tmp_path, request, model, small_catalog):
    """Nor onnx (the model's signature is cached by its sha256 since night 1), nor pandas (which
    pyarrow imports on its first `pa.array`, `pa.scalar`, `to_numpy` or `pq.read_table`)."""
    model = request.getfixturevalue(model)
    options = RunOptions(batch_size=16, max_error_rate=1.0)
    run_catalog(model, [str(small_catalog)], tmp_path / "night1", options)
    modules, _ = imported(
        tmp_path, "run", model, small_catalog, "--out", tmp_path / "night2", "--since", tmp_path / "night1",
        "--no-progress", "--max-error-rate", "1",
    )  # fmt: skip
    summary = json.loads((tmp_path / "night2" / "_summary.json").read_text())
    assert summary["decoded"] == 0 and summary["reused"] == summary["rows"] > 0
    assert (tmp_path / "night2" / "_SUCCESS").exists()
    assert "skutag.batchrun.plan.incremental" in modules
    assert not heavy(modules), heavy(modules)
    light = {m for m in modules if m.split(".")[0] in ("onnx", "pandas", "ml_dtypes")} | (
        {"pyarrow.dataset"} & modules
    )
    assert not light, light


def test_similar_by_id_imports_neither(tmp_path, embedding_model, small_catalog):
    run = tmp_path / "run"
    run_catalog(embedding_model, [str(small_catalog)], run, RunOptions(embeddings=True, batch_size=16))
    index = tmp_path / "index"
    imported(tmp_path, "index", run, "--out", index)
    first = sorted(p for p in small_catalog.rglob("*.png") if p.is_file()) or sorted(
        p for p in small_catalog.rglob("*.jpg")
    )
    query = first[0].relative_to(small_catalog).as_posix()
    modules, result = imported(tmp_path, "similar", index, "--id", query, "-k", 3, "--format", "json")
    assert len(json.loads(result.stdout)) == 3
    assert not heavy(modules), heavy(modules)


def test_ray_decode_tasks_import_neither(tmp_path, small_catalog):
    """What a Ray worker imports to run a decode task (the module of `decode_block`), and the task itself."""
    pytest.importorskip("ray")
    files = sorted(str(p) for p in small_catalog.rglob("*") if p.suffix in (".jpg", ".png"))[:3]
    code = (
        "import atexit, json, os, sys\n"
        "import numpy as np\n"
        "path = os.environ['SKUTAG_MODULES_OUT']\n"
        "atexit.register(lambda: open(path, 'w').write(json.dumps(sorted(sys.modules))))\n"
        "from skutag.batchrun.engines.ray_stages import decode_block\n"
        "from skutag.batchrun.decode.loader import Preprocess, ReadOptions\n"
        "files = sys.argv[1:]\n"
        "block = {'task': np.arange(len(files)), 'uri': np.array(files, object), 'size': np.full(len(files), -1)}\n"
        "out = decode_block(block, Preprocess(32, 36, 'bilinear'), ReadOptions(1 << 26, {}), 60.0)\n"
        "assert out['ok'].all() and out['pixels'].shape == (len(files), 32, 32, 3), out\n"
    )
    modules, _ = imported(tmp_path, *files, code=code)
    assert "skutag.batchrun.engines.ray_stages" in modules
    assert not heavy(modules), heavy(modules)


@pytest.mark.parametrize("model", ["tiny_model", "review_model"])
def test_predict_of_a_model_never_seen_imports_no_onnx(tmp_path, request, model, small_catalog):
    """`skutag predict` reads the card and signature from its ONNX Runtime session: a model file seen for
    the first time (an empty signature cache) costs no `onnx` import (one to two seconds), nor pandas."""
    model = request.getfixturevalue(model)
    photo = sorted(p for p in small_catalog.rglob("*") if p.suffix in (".jpg", ".png"))[0]
    cache = tmp_path / "empty-cache"
    modules, result = imported(
        tmp_path, "predict", model, photo, "--json", env={"SKUTAG_CACHE_DIR": str(cache)}
    )
    rows = json.loads(result.stdout)
    assert rows[0]["status"] == "ok" and len(rows[0]["labels"]) == 3, rows
    assert "onnxruntime" in modules  # the check ran a session, not just the CLI
    light = {m for m in modules if m.split(".")[0] in ("onnx", "ml_dtypes", "pandas", "torch")}
    assert not light, light
    assert not cache.exists() or not any(cache.rglob("*.json"))  # nor parsed the file to cache it
