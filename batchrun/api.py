"""`run_catalog`: the Python API of `skutag run`, and the summary it returns and writes.

Order of events (DESIGN.md: never fork after a session exists): read the model's contract
from the file, resolve the inputs, prepare OUT (resume / refuse / already complete), fork
the DataLoader workers, THEN create the one ONNX Runtime session, start the writer thread,
stream batches, commit the last part, write `summary.json`, then `_SUCCESS`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from skutag import __version__
from skutag.errors import InputError
from skutag.fsio import atomic_write_json, atomic_write_text

from .manifest import Manifest, OutputNames, prepare_out, read_summary
from .model import ForeignPreprocessing, ModelContract, read_contract
from .pipeline import Pipeline
from .ranges import Shard, length, subtract
from .sources import InputList, resolve_sources

DEFAULT_PART_ROWS = 50_000


@dataclass
class RunSummary:
    """What a run did. Counts cover the whole shard (resumed parts included); rates and times this attempt."""

    out: str
    rows: int
    ok: int
    errors: int
    errors_by_kind: dict[str, int]
    skipped: int
    duplicates: int
    inputs_total: int
    shard: str
    resumed_rows: int  # rows committed by an earlier attempt and skipped now
    processed_rows: int  # rows predicted by this attempt
    images_per_s: float  # processed_rows / wall_s
    wall_s: float
    decode_s: float  # summed over workers: reading, hashing, decoding
    wait_s: float  # main process waiting for decoded batches
    inference_s: float
    write_s: float  # writer thread: building Arrow rows, Parquet, commits
    device: str
    providers: list[str]
    fallback_reason: str | None
    batch_size: int
    workers: int
    model: str
    model_sha256: str
    max_error_rate: float
    error_rate: float
    exceeded_error_rate: bool
    already_complete: bool = False
    parts: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    skutag_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_catalog(
    model: str | os.PathLike,
    sources: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    prefetch: int | None = None,
    device: str = "auto",
    threads: int | None = None,
    topk: int = 5,
    embeddings: bool = False,
    shard: str | Shard = "0/1",
    max_error_rate: float = 0.01,
    part_rows: int = DEFAULT_PART_ROWS,
    overwrite: bool = False,
    trt_cache: str | os.PathLike | None = None,
    foreign: ForeignPreprocessing | None = None,
    progress: bool = False,
    worker_nice: int | None = None,
) -> RunSummary:
    """Predict every input of `sources` with `model` into Parquet under `out`; see the module docstring.

    Returns the summary; the caller decides what `exceeded_error_rate` means (the CLI exits 3).
    `worker_nice` (a benchmarking knob): the decode workers' nice increment; default +5 on the CPU, 0 with a GPU.
    """
    started, started_at = time.perf_counter(), _now()
    out = Path(out)
    shard = shard if isinstance(shard, Shard) else Shard.parse(shard)
    if topk < 1:
        raise InputError("--topk must be at least 1")
    contract = read_contract(model, foreign)
    if embeddings and contract.embedding_dim is None:
        raise InputError(
            f"--embeddings: {contract.path} has no `embedding` output (export it with --embeddings)"
        )
    inputs = resolve_sources(sources)
    names = OutputNames(shard)
    topk = min(topk, contract.card.num_classes)
    prepared = prepare_out(
        out, names, run_key(contract, inputs, shard, topk, embeddings), overwrite=overwrite
    )
    if prepared.complete:  # judged against this call's --max-error-rate
        done = read_summary(out, names)
        exceeded = done["error_rate"] > max_error_rate
        return RunSummary(
            **{
                **done,
                "already_complete": True,
                "max_error_rate": max_error_rate,
                "exceeded_error_rate": exceeded,
            }
        )
    pending = subtract(shard.slice(len(inputs)), prepared.manifest.committed())
    options = {
        "batch_size": batch_size,
        "device": device,
        "topk": topk,
        "embeddings": embeddings,
        "shard": str(shard),
        "max_error_rate": max_error_rate,
        "part_rows": part_rows,
        "sources": [os.fspath(s) for s in sources],
    }
    pipeline = Pipeline(
        contract,
        inputs,
        pending,
        out=out,
        names=names,
        manifest=prepared.manifest,
        batch_size=batch_size,
        workers=workers,
        prefetch=prefetch,
        device=device,
        threads=threads,
        topk=topk,
        embeddings=embeddings,
        part_rows=part_rows,
        trt_cache=trt_cache,
        file_metadata=file_metadata(contract, options),
        worker_nice=worker_nice,
    )
    stats = pipeline.run(progress=progress and length(pending) > 0)
    summary = _summarise(
        out, prepared.manifest, contract, inputs, shard, stats, options, max_error_rate, started, started_at
    )
    atomic_write_json(out / names.summary, summary.to_dict())
    atomic_write_text(out / names.success, "")
    return summary


def run_key(
    contract: ModelContract, inputs: InputList, shard: Shard, topk: int, embeddings: bool
) -> dict[str, Any]:
    """What must match for a rerun to continue an existing OUT."""
    card = contract.card
    return {
        "model_sha256": contract.sha256,
        "inputs_fingerprint": inputs.fingerprint(),
        "inputs_total": len(inputs),
        "shard_index": shard.index,
        "shard_count": shard.count,
        "topk": topk,
        "embeddings": embeddings,
        "model": {
            "classes": list(card.classes),
            "image_size": card.image_size,
            "resize_size": card.resize_size,
            "interpolation": card.interpolation,
            "mean": list(card.mean),
            "std": list(card.std),
            "scores_output": contract.scores_output,
            "softmax": contract.apply_softmax,
        },
    }


def file_metadata(contract: ModelContract, options: dict[str, Any]) -> dict[str, str]:
    import json

    return {
        "skutag.card": contract.card.to_json(),
        "skutag.model_sha256": contract.sha256,
        "skutag.run_options": json.dumps(options, sort_keys=True),
        "skutag.version": __version__,
    }


def _summarise(
    out, manifest: Manifest, contract, inputs, shard, stats, options, max_error_rate, started, started_at
):
    counts: Counter = Counter()
    for part in manifest.parts:
        counts.update(part["counts"])
    ok = counts.pop("ok", 0)
    by_kind = {kind.split(":", 1)[1]: n for kind, n in sorted(counts.items())}
    errors = sum(by_kind.values())
    rows = ok + errors
    wall = time.perf_counter() - started
    error_rate = errors / rows if rows else 0.0
    return RunSummary(
        out=str(out),
        rows=rows,
        ok=ok,
        errors=errors,
        errors_by_kind=by_kind,
        skipped=inputs.skipped,
        duplicates=inputs.duplicates,
        inputs_total=len(inputs),
        shard=str(shard),
        resumed_rows=rows - stats.rows,
        processed_rows=stats.rows,
        images_per_s=stats.rows / wall if wall > 0 else 0.0,
        wall_s=wall,
        decode_s=stats.decode_s,
        wait_s=stats.wait_s,
        inference_s=stats.inference_s,
        write_s=stats.write_s,
        device=stats.device,
        providers=stats.providers,
        fallback_reason=stats.fallback_reason,
        batch_size=options["batch_size"],
        workers=stats.workers,
        model=str(contract.path),
        model_sha256=contract.sha256,
        max_error_rate=max_error_rate,
        error_rate=error_rate,
        exceeded_error_rate=error_rate > max_error_rate,
        parts=len(manifest.parts),
        options=options,
        started_at=started_at,
        finished_at=_now(),
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
