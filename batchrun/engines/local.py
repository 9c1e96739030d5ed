"""The local engine: supervised DataLoader workers -> one ORT session -> the writer thread.

Decoding (worker processes), inference (main thread; ORT releases the GIL) and writing
(a thread behind a bounded queue) overlap, and every stage holds a bounded number of
batches. Workers are forked before the session is created (DESIGN.md); after a worker
dies or hangs, `batchrun.supervise` contains it and spawns fresh ones.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field

from skutag.runtime import gpu_present

from ..incremental import Previous
from ..infer import make_predictor, open_session
from ..loader import CPU_WORKER_NICE, Preprocess, ReadOptions, TaskDataset, default_workers
from ..model import ModelContract
from ..options import RunOptions
from ..out import Manifest, OutputNames
from ..plan import Plan
from ..progress import ProgressReporter
from ..supervise import SupervisedLoader, batches_of
from ..work import WorkList
from ..writer import UnitWriter, empty_predictions, prediction_schema

log = logging.getLogger(__name__)


@dataclass
class Stats:
    rows: int = 0  # rows committed by this attempt
    tasks: int = 0  # images decoded by this attempt
    decode_s: float = 0.0
    wait_s: float = 0.0
    inference_s: float = 0.0
    write_s: float = 0.0
    workers: int = 0
    restarts: int = 0  # times the decode workers were replaced after one died or hung
    device: str = "none"
    providers: list[str] = field(default_factory=list)
    fallback_reason: str | None = None


def run_local(
    contract: ModelContract,
    plan: Plan,
    work: WorkList,
    *,
    out: str,
    names: OutputNames,
    manifest: Manifest,
    previous: Previous | None,
    options: RunOptions,
    file_metadata: dict[str, str],
) -> Stats:
    """Decode, predict and commit every unit of `work`."""
    gpu = options.device != "cpu" and gpu_present()  # pad batches to one shape, pin host memory
    workers = options.workers if options.workers is not None else default_workers("cuda" if gpu else "cpu")
    workers = workers if work.tasks else 0
    nice = (0 if gpu else CPU_WORKER_NICE) if options.worker_nice is None else options.worker_nice
    card = contract.card
    dataset = TaskDataset(
        work.task_uris,
        work.task_sizes,
        Preprocess(card.image_size, card.resize_size, card.interpolation),
        ReadOptions(options.max_bytes, options.storage_options),
    )
    loader = SupervisedLoader(
        dataset,
        batches_of(work.tasks, options.batch_size),
        workers=workers,
        prefetch=options.prefetch,
        pad_to=options.batch_size if gpu else 0,
        pin_memory=gpu,
        nice=nice,
        timeout_s=options.decode_timeout_s,
    )
    stats = Stats(workers=workers)
    gc.freeze()  # the workers' collections then never touch (and copy) the inherited heap
    try:
        batches = loader.start()  # forks the workers: before the session exists
    finally:
        gc.unfreeze()
    try:
        session, info = open_session(
            contract,
            options.device,
            batch_size=options.batch_size,
            threads=options.threads,
            trt_cache=options.trt_cache,
            share_cores=workers > 0 and not gpu,
        )
        stats.device, stats.providers, stats.fallback_reason = (
            info.device,
            info.providers,
            info.fallback_reason,
        )
        if gpu and info.device == "cpu":
            log.warning("running on the CPU: %s", info.fallback_reason)
        predict = make_predictor(
            session,
            info,
            contract,
            topk=options.topk,
            embeddings=options.embeddings,
            batch_size=options.batch_size,
        )
        schema = prediction_schema(contract.embedding_dim if options.embeddings else None, file_metadata)
        writer = UnitWriter(
            out,
            names,
            manifest,
            plan,
            work,
            schema=schema,
            classes=list(card.classes),
            previous=previous,
            storage_options=options.storage_options,
        ).start()
        try:
            _stream(batches, predict, writer, stats, options, contract, work.tasks)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        finally:
            stats.write_s = writer.seconds
            stats.rows = writer.committed_rows
    finally:
        batches.close()
    stats.restarts = loader.restarts
    return stats


def _stream(
    batches, predict, writer: UnitWriter, stats: Stats, options: RunOptions, contract, tasks: int
) -> None:
    dim = contract.embedding_dim if options.embeddings else None
    with ProgressReporter(tasks, enabled=options.progress and tasks > 0) as reporter:
        waited = time.perf_counter()
        for batch in batches:
            started = time.perf_counter()
            stats.wait_s += started - waited
            if batch.ok.any():
                predictions = predict(batch)
            else:
                predictions = empty_predictions(len(batch), options.topk, dim)
            stats.inference_s += time.perf_counter() - started
            batch.pixels = None  # the writer needs the row facts only: free the pixels now
            writer.put(batch, predictions)
            stats.tasks += len(batch)
            stats.decode_s += batch.decode_seconds
            reporter.advance(len(batch))
            waited = time.perf_counter()
