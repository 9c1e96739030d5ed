"""Did 0.2's robustness work slow `load_image` on real photos? No: 1.003x (catalog) and 1.015x (clothing) of 0.1.0's (history/0.1-0.3.md, issue 9).

The table of `python -m benchmarks.image_suite --real` with one more method: the `load_image` of
an older source tree (TREE/skutag/images.py, imported in the same process under its own name),
and an "x before" column.

    git worktree add /tmp/skutag-0.1.0 2c8ac00
    python -m benchmarks.experiments.release_decode --real ../shared/data/catalog-photos \\
        --real ../shared/data/clothing --before /tmp/skutag-0.1.0 --rounds 9
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.image_suite import report_real


def release_load_image(tree: Path) -> Callable[[Path], object]:
    """`load_image` of another skutag source tree, imported under its own module name."""
    spec = importlib.util.spec_from_file_location("skutag_before_images", tree / "skutag" / "images.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return lambda path: module.load_image(path).pixels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--real", action="append", type=Path, required=True, help="photos under DIR (repeatable)"
    )
    parser.add_argument("--before", type=Path, required=True, help="a source tree of an older skutag")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    release = (f"load_image before ({args.before})", release_load_image(args.before))
    print(report_real(args.real, args.rounds, release))


if __name__ == "__main__":
    main()
