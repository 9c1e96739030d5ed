"""`skutag plan` at scale: time and peak RSS of planning manifests of growing size.

    python -m benchmarks.plan_suite --rows 200000,2000000 [--photos ../shared/data]

Each manifest is a CSV of `id,path` rows over real files (the photos, named many times under
different ids, as colour variants and relisted products do, ids not in file order), so every
row is stat'ed as a user's would be. Each plan runs in a fresh process (`skutag plan`) whose
peak RSS (VmHWM) is read from /proc while it runs (`benchmarks.common.measure`). Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from benchmarks.common import DATA, header, load_average, measure, photos, repeated_manifest, skutag_command


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="200000,2000000")
    parser.add_argument("--photos", type=Path, default=DATA)
    parser.add_argument("--scratch", default=None)
    args = parser.parse_args(argv)
    files = photos(args.photos)
    load = load_average()
    lines = ["| manifest rows | plan wall s | peak RSS MiB | rows/s |", "|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        for rows in (int(r) for r in args.rows.split(",")):
            manifest = repeated_manifest(
                files, rows, Path(scratch, f"manifest-{rows}.csv"), scattered_ids=True
            )
            done = measure(skutag_command("plan", manifest, "--out", Path(scratch, f"out-{rows}")))
            if done.returncode != 0:
                raise SystemExit(f"skutag plan exited {done.returncode}: {done.last_error_line}")
            lines.append(
                f"| {rows:,} | {done.wall_s:.1f} | {done.peak_rss_mib:.0f} | {rows / done.wall_s:,.0f} |"
            )
            print(lines[-1], flush=True)
            os.unlink(manifest)
    print(header("pyarrow", before=load))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
