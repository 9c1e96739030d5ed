"""The Ray engine: CPU decode tasks -> inference actors (one ORT session each) -> commits in the driver.

`--engine ray` runs the same WorkList as the local engine on Ray Data: the decode tasks of
the shard (`work.task_uris`) become blocks of `--batch-size` rows, `ray_stages.decode_block`
decodes them in CPU tasks through the local engine's `decode_one`, and `ray_stages.Predictor`
actors predict them. The driver iterates the results and hands them to the same
`writer.UnitWriter` as the local engine, which commits each unit of the plan once all its
tasks are back: one part under its deterministic name (`out.part_name`), written in one
step, then the commit log. So a decode task or actor lost mid-run is retried by Ray and its
rows arrive once (the writer also drops any task id it has already seen), and a driver killed
mid-run leaves only committed units, which the rerun skips after `api.py` has checked the
run key.

Without `--ray-address` a local Ray is started for the run and shut down after it (no
`ray::` process outlives the run); with `auto` or an address the run joins that cluster.
A job that stops making progress fails after `SKUTAG_RAY_NO_PROGRESS_S` seconds (default
600) with one line, instead of hanging.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from skutag.errors import SkutagError, SystemicFault, TransientError
from skutag.extras import require
from skutag.runtime import gpu_present

from ..commit.writer import UnitWriter
from ..decode.loader import CPU_WORKER_NICE, Preprocess, ReadOptions, batch_of
from ..options import RunOptions
from ..plan.work import WorkList
from ..predict.model import ModelContract
from .base import Stats, committing
from .progress import ProgressReporter
from .ray_resources import RayResources, alive_nodes, cluster_resources, local_resources
from .ray_stages import Predictor, PredictorConfig, decode_block, to_predictions

log = logging.getLogger(__name__)

NO_PROGRESS_ENV = "SKUTAG_RAY_NO_PROGRESS_S"
DEFAULT_NO_PROGRESS_S = 600.0
# What one decode task may hold at its peak (a 50-megapixel photo decoded, then resized), so Ray
# never schedules more decode tasks on a node than its memory holds.
DECODE_TASK_MEMORY = 512 << 20
# A local Ray started for one run serves no dashboard and records no metrics: on a small machine
# every process Ray keeps busy takes cycles from decoding and inference.
LOCAL_RAY_CONFIG = {"enable_metrics_collection": False, "event_stats": False}


def import_ray():
    """The `ray` module with Ray Data, or MissingExtra (one line, exit 2: install the ray extra)."""
    require("ray.data", "ray", "--engine ray")
    import ray

    return ray


def run_ray(contract: ModelContract, work: WorkList, writer: UnitWriter, options: RunOptions) -> Stats:
    """Decode, predict and commit (through `writer`) every unit of `work` on Ray Data (module docstring)."""
    ray = import_ray()
    stats = Stats()
    writer.start()
    with committing(writer, stats):
        if work.tasks:  # units made only of reused rows need no cluster
            started = time.perf_counter()
            with connect(ray, options) as resources:
                log.info("ray: %s (Ray ready in %.1f s)", resources.describe(), time.perf_counter() - started)
                stats.workers = resources.decode_tasks
                dataset = _pipeline(ray, contract, work, options, resources)
                # No prefetching: with `prefetch_batches=N` Ray's iterator holds back the first block
                # until N more have arrived (one actor batch each), which delayed the first rows
                # by N batches (seconds with fp32 on a small machine), and the blocks the driver
                # reads are a few KB of top-k and facts: there is nothing worth fetching ahead.
                blocks = dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0)
                first = _stream(blocks, writer, stats, options, work.tasks)
                if log.isEnabledFor(logging.DEBUG):  # --verbose: where Ray Data's time went, per stage
                    log.debug("ray: dataset stats\n%s", dataset.stats())
                stopping = time.perf_counter()
            log.info(
                "ray: first rows %.1f s after the start, last %.1f s, Ray stopped in %.1f s",
                first - started, stopping - started, time.perf_counter() - stopping,
            )  # fmt: skip
    return stats


@contextlib.contextmanager
def connect(ray, options: RunOptions) -> Iterator[RayResources]:
    """Join the cluster at `--ray-address`, or start a local Ray sized for this run and stop it after."""
    started = False
    if ray.is_initialized():  # a caller of the Python API that set Ray up itself
        resources = _cluster_plan(ray, options)
    elif options.ray_address:
        _init(ray, address=options.ray_address)
        resources = _cluster_plan(ray, options)
    else:
        gpus = _local_gpus() if options.device != "cpu" else 0
        resources = local_resources(options.device, gpus, options.workers, options.threads)
        _init(
            ray,
            address="local",
            num_cpus=resources.local_cpus(),
            num_gpus=gpus,
            _system_config=LOCAL_RAY_CONFIG,
        )
        started = True
    try:
        yield resources
    finally:
        if started or options.ray_address:
            ray.shutdown()  # a local Ray: stops every process it started


def _init(ray, **kwargs: Any) -> None:
    try:
        ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = kwargs.get("address")
        raise SkutagError(f"--engine ray: cannot start or join Ray at {where!r}: {_first_line(exc)}") from exc


def _cluster_plan(ray, options: RunOptions) -> RayResources:
    nodes = alive_nodes(ray.nodes())
    if not nodes:
        raise SkutagError("--engine ray: the Ray cluster has no live node")
    return cluster_resources(nodes, options.device, options.workers, options.threads)


def _local_gpus() -> int:
    if not gpu_present():
        return 0
    import torch

    return torch.cuda.device_count()


def _pipeline(ray, contract: ModelContract, work: WorkList, options: RunOptions, resources: RayResources):
    """The Ray Dataset of predicted rows (facts + top-k), in blocks of about `--batch-size` rows."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.execution_no_progress_timeout_s = _no_progress_s()
    context.wait_for_min_actors_s = -1  # actors start asynchronously, under the no-progress guard
    context.enable_progress_bars = False
    context.max_errored_blocks = 0  # never drop rows: the stages turn failures into error rows
    context.execution_options.preserve_order = False  # the writer completes units in any order
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    card = contract.card
    tasks = pa.table(
        {
            "task": pa.array(np.arange(work.tasks, dtype=np.int64)),
            "uri": work.task_uris.cast(pa.string()),
            "size": pa.array(work.task_sizes, pa.int64()),
        }
    )
    step = max(1, options.batch_size)
    # from_blocks puts the blocks from here; from_arrow would run remote tasks outside the no-progress guard
    dataset = ray.data.from_blocks([tasks.slice(start, step) for start in range(0, work.tasks, step)])
    dataset = dataset.map_batches(
        decode_block,
        batch_size=None,  # one task per block
        batch_format="numpy",
        fn_kwargs={
            "preprocess": Preprocess(card.image_size, card.resize_size, card.interpolation),
            "read": ReadOptions(options.max_bytes, options.storage_options),
            "timeout_s": options.decode_timeout_s,
            # CPU inference on the same cores: decoding fills the cycles ORT leaves (as the local engine's workers)
            "nice": 0 if resources.gpu else CPU_WORKER_NICE,
        },
        # No CPUs asked: the pool size bounds the decode tasks, so no placement of actors (not even
        # actors Ray restarts on the surviving nodes after a node loss) can starve them (ray#44687).
        num_cpus=0,
        # Also keeps Ray Data from fusing the decode tasks into the actors (it fuses a task stage into
        # the next actor stage when their remote arguments are equal): decode must not wait on inference.
        memory=DECODE_TASK_MEMORY,
        compute=ray.data.TaskPoolStrategy(size=resources.decode_tasks),
    )
    with open(contract.path, "rb") as f:
        model = ray.put(f.read())  # worker nodes need no copy of the file
    config = PredictorConfig(
        device=options.device,
        batch_size=options.batch_size,
        threads=resources.threads,
        topk=options.topk,
        embeddings=options.embeddings,
        trt_cache=options.trt_cache,
        share_cores=not resources.gpu,
    )
    return dataset.map_batches(
        Predictor,
        fn_constructor_args=(contract, [model], config),  # nested: the actor fetches the bytes
        batch_size=options.batch_size,
        batch_format="numpy",
        num_cpus=resources.actor_cpus,
        num_gpus=resources.actor_gpus or None,
        compute=ray.data.ActorPoolStrategy(size=resources.actors),
    )


def _stream(blocks, writer: UnitWriter, stats: Stats, options: RunOptions, tasks: int) -> float:
    """Blocks of predicted rows -> the writer, which keeps the first delivery of each task id.

    Returns when (`time.perf_counter`) the first rows came back."""
    seen = np.zeros(tasks, bool)
    first = time.perf_counter()
    with ProgressReporter(tasks, enabled=options.progress) as reporter, _ray_errors():
        waited = time.perf_counter()
        for block in blocks:
            stats.wait_s += time.perf_counter() - waited
            if len(block["task"]) == 0:
                continue
            fresh = int((~seen[block["task"]]).sum())  # repeats (a retried block) are the writer's to drop
            seen[block["task"]] = True
            if stats.device == "none":
                first = time.perf_counter()
                stats.device = str(block["device"][0])
                stats.providers = str(block["providers"][0]).split(",")
                stats.fallback_reason = str(block["fallback"][0]) or None
            stats.inference_s += float(np.sum(block["infer_s"]))
            batch = batch_of(block)
            writer.put(batch, to_predictions(block, options.embeddings))
            stats.tasks += fresh
            stats.decode_s += batch.decode_seconds
            reporter.advance(len(batch))
            waited = time.perf_counter()
    if stats.tasks != tasks:
        raise TransientError(
            f"--engine ray: {tasks - stats.tasks} decode task(s) never came back; rerun to redo them"
        )
    return first


@contextlib.contextmanager
def _ray_errors() -> Iterator[None]:
    """Ray's failures as one line (exit 1; a stall, which a rerun resumes, exit 75); a SkutagError raised
    inside an actor keeps its own."""
    from ray.data.exceptions import ExecutionTimeoutError
    from ray.exceptions import RayError

    try:
        yield
    except ExecutionTimeoutError as exc:
        raise TransientError(
            f"--engine ray: no progress for {_no_progress_s():.0f} s (stalled: not enough resources "
            f"for the decode tasks and inference actors, or a hung task); committed parts are kept, "
            f"rerun to resume ({NO_PROGRESS_ENV} sets the limit)"
        ) from exc
    except RayError as exc:
        cause = _skutag_cause(exc)
        if cause is not None:
            raise cause from exc
        raise SkutagError(f"--engine ray: the Ray job failed: {_first_line(exc)}") from exc


def _skutag_cause(exc: BaseException) -> SkutagError | None:
    """The SkutagError a Ray task or actor raised, through Ray's wrappers (their causes and contexts,
    or, when Ray could only keep its text, the `SystemicFault: ...` line of the remote traceback)."""
    pending, seen = [exc], 0
    while pending and seen < 30:
        current = pending.pop(0)
        seen += 1
        if isinstance(current, SkutagError):
            return current
        for link in (getattr(current, "cause", None), current.__cause__, current.__context__):
            if isinstance(link, BaseException):
                pending.append(link)
    found = re.search(r"\bSystemicFault: (.+)", str(exc))
    return SystemicFault(found.group(1).strip()) if found else None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _no_progress_s() -> float:
    try:
        return float(os.environ.get(NO_PROGRESS_ENV, DEFAULT_NO_PROGRESS_S))
    except ValueError:
        return DEFAULT_NO_PROGRESS_S
