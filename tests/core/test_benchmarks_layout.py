"""benchmarks/ stays a handful of suites over one module of helpers, apart from the package and the tests.

At most 15 scripts at the top of benchmarks/; nothing there imports tests/, and nothing the
package installs imports benchmarks/; every script imports; every experiment's first docstring
line says where its answer is recorded; and the GPU machine's source-tree mapping
(benchmarks/device/sitecustomize.py) finds the stage packages without an install.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
PACKAGE_DIRS = ("skutag", "trainer", "exporter", "batchrun", "insight")


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def scripts() -> list[Path]:
    return sorted(p for p in BENCH.rglob("*.py") if p.name not in ("__init__.py", "sitecustomize.py"))


def test_at_most_15_scripts_at_the_top_of_benchmarks():
    top = sorted(p.name for p in BENCH.glob("*.py"))
    assert len(top) <= 15, top


def test_benchmarks_import_nothing_from_tests_and_the_package_nothing_from_benchmarks():
    assert not [p for p in BENCH.rglob("*.py") if "tests" in imported_roots(p)]
    installed = [p for d in PACKAGE_DIRS for p in (ROOT / d).rglob("*.py")]
    assert installed
    assert not [p for p in installed if "benchmarks" in imported_roots(p)]


def test_every_experiment_says_what_it_answered_and_where():
    experiments = [p for p in (BENCH / "experiments").glob("*.py") if p.name != "__init__.py"]
    assert experiments
    for path in experiments:
        first = ast.get_docstring(ast.parse(path.read_text())).splitlines()[0]
        assert "?" in first and ("RESULTS.md" in first or "history/" in first), (path.name, first)


def test_every_script_imports():
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in scripts()]
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run(
        [sys.executable, "-c", code, *modules], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr


def test_the_gpu_machines_source_tree_mapping_finds_the_stage_packages():
    """As on the device: no install (the editable finder removed), the checkout first on sys.path."""
    code = (
        "import importlib.util, sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        "for name in [m for m in sys.modules if m == 'skutag' or m.startswith('skutag.')]:\n"
        "    del sys.modules[name]\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "assert importlib.util.find_spec('skutag') is not None\n"
        "try:\n"
        "    import skutag.trainer\n"
        "    raise SystemExit('skutag.trainer imported without the mapping')\n"
        "except ModuleNotFoundError:\n"
        "    pass\n"
        "spec = importlib.util.spec_from_file_location(\n"
        f"    'skutag_source_tree', {str(BENCH / 'device' / 'sitecustomize.py')!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "import skutag.batchrun.commit, skutag.exporter.formats, skutag.insight, skutag.trainer\n"
        "print(skutag.batchrun.commit.__file__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == ROOT / "batchrun" / "commit" / "__init__.py"
