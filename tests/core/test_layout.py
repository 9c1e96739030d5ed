"""The shape of the house: one import name, layers that only point down, no import circles.

The repository keeps its stage folders at the top (trainer/, exporter/, batchrun/, insight/) and
installs them under one import name, `skutag` (pyproject.toml's package-dir). The layers, lowest
first: shared basics <- inputs <- the stages {trainer, exporter, batchrun} <- {insight, bench};
the CLI entry modules (skutag/cli.py, the demo, each package's cli.py) sit above everything and
nothing imports them. docs/design.md describes it.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"skutag": "skutag", "trainer": "skutag.trainer", "exporter": "skutag.exporter"}
FOLDERS |= {"batchrun": "skutag.batchrun", "insight": "skutag.insight", "pages": "skutag.pages"}

# Modules of the `skutag/` folder by layer; a new module there must be placed here.
BASICS = {
    "errors",
    "extras",
    "review_stats",
    "heads",
    "calibration",
    "fsio",
    "card",
    "formats",
    "artifacts",
    "runtime",
    "normalize",
    "options",
    "retries",
}
INPUTS = {
    "images",
    "image_errors",
    "image_files",
    "image_pixels",
    "listing",
    "manifests",
    "storage",
    "conditional",
    "entries",
    "synth",
    "decisions",
}
ENTRY = {"cli", "__main__", "demo", "synth_cli"}
# The stages, in the order they may import each other: export reads what training made.
STAGES = {"trainer": 2, "batchrun": 2, "exporter": 3}
LAYER_NAMES = {
    0: "basics",
    1: "inputs",
    2: "trainer/batchrun",
    3: "exporter",
    4: "insight/bench/predict/pages",
    5: "entry",
}


def modules() -> dict[str, Path]:
    """Every module of the installed package, by its import name."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of the package that `name` imports when it runs, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    typing_only = {  # `if TYPE_CHECKING:` blocks import nothing when the code runs
        id(inner)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for inner in ast.walk(statement)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imports(name, path, set(modules())) for name, path in modules().items()}


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # skutag/__init__.py: the version
    if parts[-1] == "cli" or parts[1] in ENTRY:
        return 5  # a command's click module composes the stages it runs; nothing imports it
    if parts[1] in STAGES:
        return STAGES[parts[1]]
    if parts[1] in ("insight", "bench", "predict", "pages"):
        return 4
    if parts[1] in BASICS:
        return 0
    if parts[1] in INPUTS:
        return 1
    raise AssertionError(f"{module}: place it in a layer in tests/core/test_layout.py")


def test_every_module_imports_only_its_own_layer_or_below():
    upward = [
        f"{a} ({LAYER_NAMES[layer(a)]}) imports {b} ({LAYER_NAMES[layer(b)]})"
        for a, targets in GRAPH.items()
        for b in targets
        if layer(b) > layer(a) or (layer(b) == layer(a) == 2 and a.split(".")[1] != b.split(".")[1])
    ]
    assert not upward, "\n".join(sorted(upward))


def test_no_module_is_imported_by_its_own_imports():
    """No import circle between modules (lazy imports inside functions count too)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not circles, circles


def test_no_package_imports_a_package_that_imports_it():
    def package(module: str) -> str:
        return ".".join(module.split(".")[:2]) if module.count(".") else module

    # an entry module (a package's cli.py) sits above every layer and nothing imports it: its imports
    # cannot close a circle (the module-level test above still sees them)
    edges = {(package(a), package(b)) for a, targets in GRAPH.items() if layer(a) < 5 for b in targets}
    both_ways = sorted((a, b) for a, b in edges if a < b and (b, a) in edges and a != b)
    both_ways = [(a, b) for a, b in both_ways if "skutag" not in (a, b)]  # the basics are many packages' own
    assert not both_ways


def test_the_package_list_names_every_folder():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert listed == on_disk


def test_the_wheel_installs_one_import_name(tmp_path):
    source = tmp_path / "source"  # a copy: setuptools leaves build/ and *.egg-info in the tree it builds
    source.mkdir()
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy(ROOT / name, source / name)
    for name in FOLDERS:
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path]
    subprocess.run([*pip, source], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("skutag-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"skutag", f"{wheel.name.split('-py')[0]}.dist-info"}
    installed = {str(Path(n).parent).replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert installed == {name for name, path in modules().items() if path.name == "__init__.py"}
    assert not [n for n in names if n.startswith(("benchmarks/", "tests/"))]
    templates = {"skutag/pages/templates/report.html", "skutag/pages/templates/review.html"}
    assert templates <= set(names)  # package data: the pages' templates


def test_the_layout_limits():
    flat = [p.name for p in (ROOT / "batchrun").glob("*.py")]
    assert len(flat) <= 6, flat
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
    assert (ROOT / "docs" / "design.md").is_file()


def test_nothing_points_at_a_design_file_outside_the_repository():
    texts = [*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("Makefile")]
    for folder in [*FOLDERS, "benchmarks", "tests", ".ci"]:
        texts += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".sh", "")]
    stale = [
        str(p.relative_to(ROOT))
        for p in texts
        if p.is_file() and "DESIGN" + ".md" in p.read_text(errors="ignore")
    ]
    assert not stale
