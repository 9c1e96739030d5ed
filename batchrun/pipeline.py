"""The streaming core: DataLoader workers -> one ORT session -> the writer thread.

Decoding (worker processes), inference (main thread; ORT releases the GIL) and writing
(a thread behind a bounded queue) overlap, and every stage holds a bounded number of
batches, so memory stays flat however large the catalog is. Workers are forked before the
session is created (DESIGN.md); the session never exists in a worker.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skutag.runtime import gpu_present

from .infer import make_predictor, open_session
from .loader import CPU_WORKER_NICE, CatalogDataset, Preprocess, default_workers, make_loader
from .manifest import Manifest, OutputNames
from .model import ModelContract
from .progress import ProgressReporter
from .ranges import Range, RangeIndex
from .sources import InputList
from .writer import PartWriter, prediction_schema

log = logging.getLogger(__name__)


@dataclass
class Stats:
    rows: int = 0
    decode_s: float = 0.0
    wait_s: float = 0.0
    inference_s: float = 0.0
    write_s: float = 0.0
    workers: int = 0
    device: str = "none"
    providers: list[str] = field(default_factory=list)
    fallback_reason: str | None = None


class Pipeline:
    def __init__(
        self,
        contract: ModelContract,
        inputs: InputList,
        pending: list[Range],
        *,
        out: Path,
        names: OutputNames,
        manifest: Manifest,
        batch_size: int,
        workers: int | None,
        prefetch: int | None,
        device: str,
        threads: int | None,
        topk: int,
        embeddings: bool,
        part_rows: int,
        trt_cache: Any,
        file_metadata: dict[str, str],
        worker_nice: int | None = None,
    ):
        self.contract, self.inputs, self.pending = contract, inputs, RangeIndex(pending)
        self.out, self.names, self.manifest = out, names, manifest
        self.batch_size, self.prefetch, self.device, self.threads = batch_size, prefetch, device, threads
        self.topk, self.embeddings, self.part_rows, self.trt_cache = topk, embeddings, part_rows, trt_cache
        self.file_metadata = file_metadata
        self.gpu = device != "cpu" and gpu_present()  # pad batches to one shape, pin host memory
        if workers is None:
            workers = default_workers("cuda" if self.gpu else "cpu")
        self.workers = workers if len(self.pending) else 0
        self.worker_nice = (0 if self.gpu else CPU_WORKER_NICE) if worker_nice is None else worker_nice

    def run(self, *, progress: bool) -> Stats:
        card = self.contract.card
        dataset = CatalogDataset(
            self.inputs.uris, self.pending, Preprocess(card.image_size, card.resize_size, card.interpolation)
        )
        loader = make_loader(
            dataset,
            batch_size=self.batch_size,
            workers=self.workers,
            prefetch=self.prefetch,
            pad_batches=self.gpu,
            pin_memory=self.gpu,
            worker_nice=self.worker_nice,
        )
        stats = Stats(workers=self.workers)
        gc.freeze()  # the workers' collections then never touch (and copy) the inherited heap
        try:
            batches = iter(loader)  # forks the workers: before the session exists
        finally:
            gc.unfreeze()
        try:
            session, info = open_session(
                self.contract,
                self.device,
                batch_size=self.batch_size,
                threads=self.threads,
                trt_cache=self.trt_cache,
                share_cores=self.workers > 0 and not self.gpu,
            )
            stats.device, stats.providers, stats.fallback_reason = (
                info.device,
                info.providers,
                info.fallback_reason,
            )
            if self.gpu and info.device == "cpu":
                log.warning("running on the CPU: %s", info.fallback_reason)
            predict = make_predictor(
                session,
                info,
                self.contract,
                topk=self.topk,
                embeddings=self.embeddings,
                batch_size=self.batch_size,
            )
            self._stream(batches, predict, stats, progress)
        finally:
            shutdown = getattr(
                batches, "_shutdown_workers", None
            )  # also on errors, not at garbage collection
            if shutdown is not None:
                shutdown()
        return stats

    def _stream(self, batches, predict, stats: Stats, progress: bool) -> None:
        schema = prediction_schema(
            self.contract.embedding_dim if self.embeddings else None, self.file_metadata
        )
        writer = PartWriter(
            self.out,
            self.names,
            self.manifest,
            schema=schema,
            ids=self.inputs.ids,
            uris=self.inputs.uris,
            classes=list(self.contract.card.classes),
            part_rows=self.part_rows,
        ).start()
        try:
            with ProgressReporter(len(self.pending), enabled=progress) as reporter:
                waited = time.perf_counter()
                for batch in batches:
                    started = time.perf_counter()
                    stats.wait_s += started - waited
                    predictions = predict(batch)
                    stats.inference_s += time.perf_counter() - started
                    batch.pixels = None  # the writer needs the row facts only: free the pixels now
                    writer.put(batch, predictions)
                    stats.rows += len(batch)
                    stats.decode_s += batch.decode_seconds
                    reporter.advance(len(batch))
                    waited = time.perf_counter()
            writer.close()
        except BaseException:
            writer.abort()
            raise
        finally:
            stats.write_s = writer.seconds
