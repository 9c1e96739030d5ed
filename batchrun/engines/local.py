"""The local engine: supervised DataLoader workers -> [GPU decode] -> one ORT session -> the writer thread.

Reading and decoding (worker processes, iterated on the main thread), GPU decoding (a
thread, `--decode gpu`), inference and top-k (a thread; ORT releases the GIL) and writing
(a thread behind a bounded queue) overlap through `batchrun.engines.pipeline`, and every stage
holds a bounded number of batches. Workers are forked before the session is created
(docs/design.md); after a worker dies or hangs, `batchrun.decode.supervise` contains it and spawns
fresh ones. With GPU decoding the workers only read, size, hash and header-check JPEGs
(`TaskDataset(read_only=True)`) and decode the other inputs themselves.
"""

from __future__ import annotations

import gc
import logging
import time

from skutag.runtime import gpu_present

from ..commit.writer import UnitWriter, empty_predictions
from ..decode.loader import CPU_WORKER_NICE, Batch, Preprocess, ReadOptions, TaskDataset, default_workers
from ..decode.supervise import SupervisedLoader, batches_of
from ..options import RunOptions
from ..plan.work import WorkList
from ..predict.infer import open_session
from ..predict.model import ModelContract
from ..predict.predictor import assemble_predictor
from .base import Stats, committing, inference_failed
from .pipeline import run_pipeline
from .progress import ProgressReporter

log = logging.getLogger(__name__)


def run_local(contract: ModelContract, work: WorkList, writer: UnitWriter, options: RunOptions) -> Stats:
    """Decode, predict and commit (through `writer`, started here after the fork) every unit of `work`."""
    card = contract.card
    if not work.tasks:  # every row is reused (--since) or kept: no workers, no session, no torch
        return _commit_only(writer)
    preprocess = Preprocess(card.image_size, card.resize_size, card.interpolation)
    decode = "cpu"
    gpu = options.device != "cpu" and gpu_present()  # pad batches to one shape, pin host memory
    if options.decode == "gpu" or (options.decode == "auto" and gpu):  # else: no torchvision import
        from ..decode.gpu import resolve_decode  # torchvision and CUDA only when asked for

        decode = resolve_decode(options.decode, options.device, card.interpolation)  # before the fork
    workers = options.workers if options.workers is not None else default_workers("cuda" if gpu else "cpu")
    workers = workers if work.tasks else 0
    nice = (0 if gpu else CPU_WORKER_NICE) if options.worker_nice is None else options.worker_nice
    dataset = TaskDataset(
        work.task_uris,
        work.task_sizes,
        preprocess,
        ReadOptions(options.max_bytes, options.storage_options),
        read_only=decode == "cuda",
    )
    loader = SupervisedLoader(
        dataset,
        batches_of(work.tasks, options.batch_size),
        workers=workers,
        prefetch=options.prefetch,
        pad_to=options.batch_size if gpu and decode == "cpu" else 0,  # the GPU decoder pads
        pin_memory=gpu and decode == "cpu",
        nice=nice,
        timeout_s=options.decode_timeout_s,
    )
    stats = Stats(workers=workers, decode=decode)
    decoder = None
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
        on_gpu = info.device in ("cuda", "tensorrt")
        if decode == "cuda":
            from ..decode.contained import ContainedDecoder
            from ..decode.gpu import GpuDecoder

            decoder = GpuDecoder(
                preprocess,
                device="cuda",
                batch_size=options.batch_size,
                fallback=ContainedDecoder(preprocess, options.decode_timeout_s),
                host_output=not on_gpu,
            )
            if not on_gpu:
                log.warning("decoding JPEGs on the GPU, predicting on the CPU (%s)", info.fallback_reason)
        predict = assemble_predictor(
            session, info, contract, topk=options.topk, embeddings=options.embeddings,
            batch_size=options.batch_size, device_pixels=decode == "cuda" and on_gpu,
        )  # fmt: skip
        writer.start()
        with committing(writer, stats):
            _predict_all(batches, decoder, predict, writer, stats, options, contract, work.tasks)
    finally:
        batches.close()
        if decoder is not None:
            decoder.fallback.close()
            stats.gpu_decode_s = decoder.seconds
            stats.gpu_decoded, stats.cpu_fallbacks = decoder.decoded, decoder.fell_back
            log.info(
                "GPU decode: %d images in %.1f s, %d handed to the CPU path",
                decoder.decoded, decoder.seconds, decoder.fell_back,
            )  # fmt: skip
    stats.restarts = loader.restarts
    return stats


def _commit_only(writer: UnitWriter) -> Stats:
    """Units made only of reused rows: the writer copies them, nothing is decoded or predicted."""
    stats = Stats()
    writer.start()
    with committing(writer, stats):
        pass
    return stats


def _predict_all(
    batches, decoder, predict, writer: UnitWriter, stats: Stats, options: RunOptions, contract, tasks: int
) -> None:
    """The pipeline: loader (this thread) -> GPU decode (when on) -> inference, top-k and writing."""
    dim = contract.embedding_dim if options.embeddings else None

    def timed(source):
        waited = time.perf_counter()
        for batch in source:
            stats.wait_s += time.perf_counter() - waited
            yield batch
            waited = time.perf_counter()

    with ProgressReporter(tasks, enabled=options.progress and tasks > 0) as reporter:

        def infer(batch: Batch) -> None:
            started = time.perf_counter()
            if batch.ok.any():
                try:
                    predictions = predict(batch)
                except Exception as exc:  # the model fails: every batch would, stop (exit 4)
                    raise inference_failed(exc) from exc
            else:
                predictions = empty_predictions(len(batch), options.topk, dim)
            stats.inference_s += time.perf_counter() - started
            batch.pixels = batch.encoded = None  # the writer needs the row facts only: free the pixels now
            writer.put(batch, predictions)
            stats.tasks += len(batch)
            stats.decode_s += batch.decode_seconds
            reporter.advance(len(batch))

        run_pipeline(timed(batches), [decoder, infer] if decoder is not None else [infer])
