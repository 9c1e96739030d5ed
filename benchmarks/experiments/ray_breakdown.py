"""Where does an `--engine ray` run's CPU go, by process role? ORT in the actor about 80% of a batch; start-up is Ray's (history/0.1-0.3.md, issue 21).

Where an `--engine ray` run's CPU goes: CPU seconds per process role, and Ray Data's per-stage stats.

Runs one `skutag -v run --engine ray` process (or any command given after `--`) and, every
0.2 s, reads the CPU time (user + system, from /proc) of every process that carries this
run's marker in its environment (the driver, Ray's daemons, its workers, the decode child).
At the end each process's last reading is summed per role: the driver, inference actor,
decode worker, contained decoder child, raylet, GCS, Ray's Python daemons (dashboard,
agents, log monitor, autoscaler monitor), and other workers (Ray Data's coordinator and
stats actors, idle workers). CPU seconds are work done, so they compare across runs even on
a busy machine, where wall times do not. The Ray Data stats that `--verbose` logs (remote
wall and CPU time per stage) are printed after.

    python -m benchmarks.experiments.ray_breakdown --model m.onnx --manifest photos-500.csv [--pythonpath OLD_TREE]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

MARK = "SKUTAG_BREAKDOWN_MARK"
TICK = os.sysconf("SC_CLK_TCK")
DAEMONS = "ray daemons (dashboard, agents, monitors)"


def marked(mark: str) -> list[int]:
    needle = f"{MARK}={mark}".encode()
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if needle in f.read():
                        pids.append(int(name))
            except OSError:
                continue
    return pids


def sample(pid: int) -> tuple[float, str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK, command  # utime + stime


def role(command: str, titles: str) -> str:
    """The role of a process from its command line and the titles Ray gave it while it worked."""
    executable = command.split(" ", 1)[0]
    if "MapBatches(Predictor)" in titles:
        return "inference actor"
    if "decode_block" in titles:
        return "decode worker"
    if "skutag.batchrun.decode.contained" in command or "multiprocessing.spawn" in command:
        return "decoder child"
    if executable.endswith("raylet"):
        return "raylet"
    if executable.endswith("gcs_server"):
        return "gcs"
    if "-m skutag" in command:
        return "driver"
    if "Agent" in command or "monitor" in command or "dashboard" in command:
        return DAEMONS
    if "default_worker.py" in command or "ray::" in command:
        return "other ray workers (Ray Data's coordinator and stats actors, idle workers)"
    return DAEMONS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pythonpath", help="run another source tree (e.g. the commit before)")
    args = parser.parse_args(argv)
    mark = uuid.uuid4().hex
    env = {**os.environ, MARK: mark}
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "skutag", "-v", "run", args.model, args.manifest, "--out", out,
                   "--engine", "ray", "--batch-size", str(args.batch_size), "--part-size", "500",
                   "--max-error-rate", "1", "--no-progress"]  # fmt: skip
        started = time.perf_counter()
        log = Path(out + ".log")
        with open(log, "w") as stderr:
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                       cwd=args.pythonpath or None)  # fmt: skip
            cpu: dict[int, float] = {}
            names: dict[int, str] = {}
            seen_titles: dict[int, str] = {}
            while process.poll() is None:
                for pid in marked(mark):
                    got = sample(pid)
                    if got is not None:
                        cpu[pid] = got[0]
                        names.setdefault(pid, got[1])
                        if "ray::" in got[1] and "IDLE" not in got[1]:  # Ray renames a worker by its work
                            seen_titles[pid] = seen_titles.get(pid, "") + " " + got[1]
                time.sleep(0.2)
        wall = time.perf_counter() - started
        text = log.read_text()
        log.unlink()
    roles: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for pid, seconds in cpu.items():
        name = role(names[pid], seen_titles.get(pid, ""))
        roles[name] += seconds
        counts[name] += 1
    total = sum(roles.values())
    print(f"whole process {wall:.1f} s, exit {process.returncode}; CPU seconds by role (processes):")
    print("| role | processes | CPU s | share |\n|---|---:|---:|---:|")
    for name, seconds in sorted(roles.items(), key=lambda item: -item[1]):
        print(f"| {name} | {counts[name]} | {seconds:.1f} | {seconds / max(total, 1e-9):.0%} |")
    print(f"| all | {sum(counts.values())} | {total:.1f} | 100% |")
    print()
    keep = ("Operator", "Remote wall time", "Remote cpu time", "Output size bytes", "INFO batchrun", "rows (")
    print(
        "\n".join(
            line for line in text.splitlines() if line.startswith(keep) or line.lstrip("* ").startswith(keep)
        )
    )


if __name__ == "__main__":
    main()
