"""Which int8 file can 0.1.0 and this tree both read? One exported by 0.1.0's own exporter, for experiments.release_compare (history/0.1-0.3.md, issue 21).

An int8 model that both 0.1.0 and this tree read: a run dir's card without the fields 0.1.0 refuses,
exported by 0.1.0's own exporter (for `benchmarks.experiments.release_compare`).

    git worktree add /tmp/skutag-0.1.0 2c8ac00
    python -m benchmarks.experiments.old_release_model RUN_DIR --calib TRAIN_DIR --old /tmp/skutag-0.1.0 --out r50-int8-010.onnx

RUN_DIR is a run of this tree's trainer (e.g. the one `benchmarks.ray_suite` makes in its
cache: `/tmp/skutag-ray-bench/run`, calibration images `/tmp/skutag-ray-bench/train`). The
card's `review` and `int8_target` (added after 0.1.0) are removed from a copy of it; 0.1.0's
exporter writes the file without its parity gate (a random backbone: speed is the point).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

NEWER_FIELDS = ("review", "int8_target")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--old", type=Path, required=True, help="0.1.0's source tree")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory() as scratch:
        run = Path(scratch) / "run"
        shutil.copytree(args.run, run)
        weights = run / "best.safetensors"
        with safe_open(str(weights), "pt") as f:
            metadata = dict(f.metadata())
        for key, value in metadata.items():
            if value.startswith("{"):
                card = json.loads(value)
                metadata[key] = json.dumps({k: v for k, v in card.items() if k not in NEWER_FIELDS})
        save_file(load_file(str(weights)), str(weights), metadata=metadata)
        card = json.loads((run / "card.json").read_text())
        (run / "card.json").write_text(json.dumps({k: v for k, v in card.items() if k not in NEWER_FIELDS}))
        command = [sys.executable, "-m", "skutag", "export", str(run), "--out", str(args.out.resolve()),
                   "--precision", "int8", "--calib", str(args.calib.resolve()), "--no-check"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(args.old)}
        subprocess.run(command, cwd=args.old, env=env, check=True)


if __name__ == "__main__":
    main()
