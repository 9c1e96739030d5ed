"""`skutag run --engine ray` on a real Ray: the local engine's rows, exactly once, nothing left running.

Every Ray here is real (no mocks): a local Ray started by the CLI, or a two-node cluster
started with `ray start`. Each test tags the processes it starts with a unique
environment variable, which Ray's raylets and workers inherit, so it finds, checks and
stops exactly its own processes (by pid), whatever else runs on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from skutag.batchrun.engines.ray_resources import NodeResources, cluster_resources, local_resources

from tests.batchrun.support import (
    Tag,
    command_line,
    committed_parts,
    read_rows,
    run,
    run_ray_cli,
    tiny_catalog,
)
from tests.support.cli import skutag

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def model(embedding_model) -> Path:
    return embedding_model


def assert_same_rows(out: Path, reference: Path) -> None:
    """The same ids, statuses, error kinds and top-1 labels as the reference run."""
    got, want = read_rows(out), read_rows(reference)
    assert got.keys() == want.keys()
    for input_id, row in want.items():
        assert (got[input_id]["status"], got[input_id]["error_kind"]) == (row["status"], row["error_kind"])
        assert got[input_id]["label"] == row["label"], input_id
        if row["status"] == "ok":
            assert got[input_id]["score"] == pytest.approx(row["score"], rel=1e-4, abs=1e-6)
            assert got[input_id]["sha256"] == row["sha256"]


@pytest.fixture(scope="module")
def local_out(model, small_catalog, awkward, tmp_path_factory) -> Path:
    """The reference: --engine local on the mixed catalog."""
    out = tmp_path_factory.mktemp("local")
    run(model, [small_catalog, awkward[0]], out, batch_size=8, part_rows=40, max_error_rate=1.0)
    return out


def ray_command(model: Path, sources: list[Path], out: Path, *extra: object) -> list[str]:
    return [
        sys.executable, "-m", "skutag", "run", str(model), *map(str, sources), "--out", str(out),
        "--engine", "ray", "--max-error-rate", "1", "--no-progress", *map(str, extra),
    ]  # fmt: skip


# -- without a cluster -------------------------------------------------------------------------


def test_without_ray_the_engine_says_how_to_install_it_in_one_line(model, awkward, tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None; from skutag.cli import main; "
        f"main(['run', {str(model)!r}, {str(awkward[0])!r}, '--out', {str(tmp_path / 'out')!r}, "
        "'--engine', 'ray', '--no-progress'])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr  # a missing extra is a usage error, as everywhere
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'skutag[ray]'" in lines[0], result.stderr


def test_resources_never_give_actors_every_cpu_of_a_node():
    for cpus in (1, 2, 3, 4, 8, 16, 64):
        plan = cluster_resources([NodeResources(cpus, 0)], "auto", None, None)
        # the actors leave room for at least one decode task on every node: no issue-44687 deadlock
        assert plan.actors * plan.actor_cpus + plan.decode_cpus <= cpus, (cpus, plan)
        assert plan.actors >= 1 and plan.decode_tasks >= 1 and plan.threads >= 1
    two = cluster_resources([NodeResources(2, 0), NodeResources(2, 0)], "auto", None, None)
    assert (two.actors, two.actor_cpus, two.decode_tasks) == (2, 1.0, 2)  # one actor per node
    forced = cluster_resources([NodeResources(2, 0)], "auto", 3, 8)  # overrides: --workers 3 --threads 8
    assert forced.decode_tasks == 3 and forced.threads == 8 and forced.actor_cpus + 1 <= 2
    gpus = cluster_resources([NodeResources(16, 2), NodeResources(8, 0)], "auto", None, None)
    assert (gpus.actors, gpus.actor_gpus, gpus.actor_cpus, gpus.decode_tasks) == (2, 1.0, 1.0, 22)
    assert cluster_resources([NodeResources(16, 2)], "cpu", None, None).actor_gpus == 0
    local = local_resources("cpu", 0, None, None)
    assert local.local_cpus() > local.actors * local.actor_cpus  # the decode tasks get CPUs of their own


# -- a local Ray started by the CLI --------------------------------------------------------------


def test_ray_engine_gives_the_local_engines_rows_and_leaves_no_process(
    model,
    small_catalog,
    awkward,
    expected,
    local_out,
    tmp_path,
):
    tag = Tag()
    out = tmp_path / "ray"
    command = ray_command(model, [small_catalog, awkward[0]], out, "--batch-size", 8, "--part-size", 40)
    seen: set[str] = set()  # Ray's processes of the run, as it runs
    try:
        process = subprocess.Popen(command, env=tag.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)  # fmt: skip
        while process.poll() is None:
            seen |= {command_line(pid).split(" ")[0] for pid in tag.pids() if pid != process.pid}
            time.sleep(0.05)
        stderr = process.communicate()[1]
        left = tag.wait_gone()
    finally:
        tag.kill()
    assert process.returncode == 0, stderr
    assert {"ray::MapWorker(MapBatches(Predictor))", "ray::IDLE"} & seen, seen  # the check sees Ray's workers
    assert any(name.endswith("raylet") for name in seen), seen
    assert not left, f"processes of the run survived it: {left}"
    assert_same_rows(out, local_out)
    assert set(read_rows(out)) == set(expected)
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["engine"] == "ray" and summary["rows"] == len(expected) and (out / "_SUCCESS").exists()
    assert summary["errors_by_kind"] == {k: 1 for k in expected.values() if k}
    manifest = json.loads((out / "_commits.json").read_text())
    assert sorted(p.name for p in out.glob("*.parquet")) == [p["file"] for p in manifest["parts"]]
    assert [p["file"] for p in manifest["parts"]] == sorted(
        p.name for p in local_out.glob("*.parquet")
    )  # the same deterministic part names as the local engine
    again = skutag(*command[3:], env=tag.env())  # a complete OUT: nothing to do, no Ray started
    assert again.returncode == 0 and "already complete" in again.stderr
    tag.close()


@pytest.mark.slow
def test_driver_sigkilled_after_its_first_part_then_rerun_gives_one_row_per_input(
    model,
    small_catalog,
    awkward,
    local_out,
    tmp_path,
):
    tag = Tag()
    out = tmp_path / "out"
    command = ray_command(model, [small_catalog, awkward[0]], out, "--batch-size", 2, "--part-size", 8)
    try:
        process = subprocess.Popen(command, env=tag.env(), start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 240
        while not committed_parts(out) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        first = committed_parts(out)
        assert first and not (out / "_SUCCESS").exists(), "the run ended before it could be killed"
        tag.kill()  # what a SIGKILLed driver may leave of its local Ray
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=tag.env())
        assert result.returncode == 0, result.stderr
        assert not tag.wait_gone()
    finally:
        tag.close()
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["resumed_rows"] >= sum(p["rows"] for p in first) > 0
    assert_same_rows(out, local_out)
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_ray_workers_killed_mid_run_lose_and_duplicate_nothing(
    model,
    small_catalog,
    awkward,
    local_out,
    tmp_path,
):
    tag = Tag()
    out = tmp_path / "out"
    command = ray_command(model, [small_catalog, awkward[0]], out, "--batch-size", 2, "--part-size", 8)
    killed: list[str] = []
    finished_first = False
    try:
        process = subprocess.Popen(command, env=tag.env(), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 240
        while process.poll() is None and time.monotonic() < deadline and len(killed) < 2:
            if committed_parts(out):
                for pid in tag.pids():
                    name = command_line(pid)
                    kind = next((k for k in ("Predictor", "decode_block") if k in name), None)
                    if kind and not any(kind in k for k in killed):
                        finished_first = finished_first or (out / "_SUCCESS").exists()
                        os.kill(pid, signal.SIGKILL)  # an inference actor, and a decode task's worker
                        killed.append(name)
                        break
            time.sleep(0.005)
        stderr = process.communicate(timeout=300)[1]
        assert process.returncode == 0, stderr
        assert not tag.wait_gone()
    finally:
        tag.close()
    assert any("Predictor" in k for k in killed) and not finished_first, killed
    assert len(committed_parts(out)) == -(-len(read_rows(local_out)) // 8)
    assert_same_rows(out, local_out)


# -- a two-node cluster on this machine ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_start(env: dict[str, str], *args: object) -> None:
    ray_cli = str(Path(sys.executable).with_name("ray"))
    result = subprocess.run([ray_cli, "start", *map(str, args)], env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.slow
def test_two_nodes_one_stopped_mid_run_lose_and_duplicate_nothing(
    model,
    small_catalog,
    awkward,
    local_out,
    tmp_path,
):
    tag = Tag()
    # A node that stops answering is declared dead after about 3 s instead of 30.
    env = tag.env(RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3",
                  RAY_health_check_timeout_ms="1000", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex)  # fmt: skip
    port = free_port()
    out = tmp_path / "out"
    worker_port = free_port()
    try:
        ray_start(env, "--head", "--port", port, "--num-cpus", 2, "--include-dashboard=false",
                  "--temp-dir", tag.temp, "--disable-usage-stats")  # fmt: skip
        ray_start(env, "--address", f"127.0.0.1:{port}", "--num-cpus", 2, "--resources", '{"second": 1}',
                  "--node-manager-port", worker_port, "--dashboard-agent-listen-port", free_port(),
                  "--metrics-export-port", free_port(), "--runtime-env-agent-port", free_port(),
                  "--disable-usage-stats")  # fmt: skip
        raylet = [p for p in tag.pids() if f"--node_manager_port={worker_port}" in command_line(p)]
        assert len(raylet) == 1, "the second node's raylet"
        second_node = set(_descendants(raylet[0])) | set(raylet)
        command = ray_command(model, [small_catalog, awkward[0]], out, "--batch-size", 2, "--part-size", 8,
                              "--ray-address", f"127.0.0.1:{port}")  # fmt: skip
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)  # fmt: skip
        deadline = time.monotonic() + 240
        worked_there = False
        while process.poll() is None and time.monotonic() < deadline:
            busy = [p for p in _descendants(raylet[0]) if command_line(p).startswith("ray::MapWorker")
                    or "decode_block" in command_line(p)]  # fmt: skip
            if busy and committed_parts(out):
                worked_there = True
                for pid in set(_descendants(raylet[0])) | second_node:  # the whole node, raylet first
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        assert worked_there, "the second node never received work before the run ended"
        stderr = process.communicate(timeout=300)[1]
        assert process.returncode == 0, stderr
        assert not (set(tag.pids()) & second_node)
    finally:
        tag.kill()  # both nodes: every process this test started, by pid
        left = tag.wait_gone()
        tag.close()
    assert not left, f"left running: {left}"
    assert_same_rows(out, local_out)
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["rows"] == len(read_rows(local_out)) and summary["resumed_rows"] == 0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.slow
def test_a_stalled_job_fails_in_one_line_instead_of_hanging(model, awkward, tmp_path, monkeypatch):
    import ray

    tag = Tag()
    monkeypatch.setenv(Tag.VARIABLE, tag.mark)
    monkeypatch.setenv("RAY_TMPDIR", tag.temp)
    monkeypatch.setenv("SKUTAG_RAY_NO_PROGRESS_S", "10")
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:

        @ray.remote(num_cpus=1.5)
        class Tenant:  # another job holding most of the cluster
            def ping(self) -> bool:
                return True

        tenant = Tenant.remote()
        assert ray.get(tenant.ping.remote())
        from skutag.errors import SkutagError

        started = time.monotonic()
        with pytest.raises(SkutagError, match="no progress for 10 s") as raised:
            run(model, [awkward[0]], tmp_path / "out", engine="ray", max_error_rate=1.0)
        assert time.monotonic() - started < 120 and "\n" not in str(raised.value)
        assert raised.value.exit_code == 75  # a stall: committed parts are kept, a rerun resumes
    finally:
        ray.shutdown()
        left = tag.wait_gone()
        tag.close()
    assert not left, left


@pytest.mark.slow  # Ray parity of the plain columns stays in the default run (the local engines' rows test)
def test_ray_engine_writes_the_review_queue_and_manifest_labels_like_the_local_engine(
    review_model, small_catalog, tmp_path
):
    images = sorted(small_catalog.glob("*/*.*"))
    classes = ["boot", "cup", "lamp", "sock", ""]  # the model's, and no label
    lines = ["id,path,label"] + [
        f"{p.parent.name}/{p.name},{p},{classes[n % 5]}" for n, p in enumerate(images)
    ]
    lines.append(f"again,{images[0]},cup")  # one decode, two rows, two labels
    manifest = tmp_path / "labels.csv"
    manifest.write_text("\n".join(lines) + "\n")
    run(review_model, [manifest], tmp_path / "local", batch_size=8, part_rows=40)
    run_ray_cli(ray_command(review_model, [manifest], tmp_path / "ray", "--batch-size", 8, "--part-size", 40))
    local, ray = read_rows(tmp_path / "local"), read_rows(tmp_path / "ray")
    assert local.keys() == ray.keys() and len(ray) == len(images) + 1
    for input_id, want in local.items():
        got = ray[input_id]
        for column in ("label", "manifest_label", "review", "review_reason"):
            assert got[column] == want[column], (input_id, column)
        assert got["ood_score"] == pytest.approx(want["ood_score"], abs=1e-4)
    reasons = [r["review_reason"] or "" for r in ray.values()]
    assert any("label_mismatch" in r for r in reasons)
    for reason, row in zip(reasons, ray.values(), strict=True):
        disagree = row["status"] == "ok" and row["manifest_label"] not in (None, row["label"])
        assert ("label_mismatch" in reason) == disagree, row
    assert sum(row["manifest_label"] is None for row in ray.values()) == len(images) // 5


@pytest.mark.slow  # --since is the plan's (engine-independent); test_since.py runs it by default
def test_a_nightly_since_run_on_ray_reuses_the_local_runs_rows_and_predicts_only_what_changed(
    model, tmp_path
):
    from skutag.synth import SynthSpec, render_file

    catalog = tmp_path / "catalog"
    tiny_catalog(catalog, 40, seed=5)
    run(model, [catalog], tmp_path / "night1", batch_size=8, part_rows=16)
    before = read_rows(tmp_path / "night1")
    files = sorted(before)
    changed, removed = files[:3], files[3:5]
    spec = SynthSpec(count=60, classes=4, min_size=48, max_size=64, seed=9)
    for i, name in enumerate(changed):
        (catalog / name).write_bytes(render_file(spec, 50 + i)[1])
    for name in removed:
        (catalog / name).unlink()
    new = f"{files[0].split('/')[0]}/zz-new.jpg"
    (catalog / new).write_bytes(render_file(spec, 0)[1])
    run_ray_cli(ray_command(model, [catalog], tmp_path / "night2", "--batch-size", 8, "--part-size", 16,
                            "--since", tmp_path / "night1"))  # fmt: skip
    after = read_rows(tmp_path / "night2")
    assert sorted(after) == sorted(set(files) - set(removed) | {new})
    for input_id, row in after.items():
        if input_id in changed or input_id == new:
            assert row["predicted_at"] > before[files[0]]["predicted_at"] and row["status"] == "ok"
        else:
            assert row == before[input_id]  # copied whole from the local engine's run, predicted_at kept
    summary = json.loads((tmp_path / "night2" / "_summary.json").read_text())
    assert summary["engine"] == "ray"
    assert (summary["reused"], summary["new"], summary["changed"], summary["removed"]) == (35, 1, 3, 2)
    assert summary["decoded"] == summary["predicted"] == 4
