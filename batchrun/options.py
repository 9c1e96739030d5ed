"""`RunOptions`: every option of a batch run, declared once.

The CLI fills it, the engines read it, `run_key` takes what must match for a rerun to
continue an OUT, and `record()` is what the Parquet metadata and `_summary.json` keep
(storage options by key only: their values may be secrets).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from skutag import storage

from .shard import Shard

DEFAULT_PART_ROWS = 10_000
DEFAULT_DECODE_TIMEOUT_S = 120.0
# Bigger than any catalog photo (real ones are 0.1-2 MB) and than a 50-megapixel 8-bit TIFF,
# small enough that a mislabelled video or disk image never reaches a decoder.
DEFAULT_MAX_BYTES = 256 << 20
ENGINES = ("local", "ray")
# Error kinds that may pass when tried again: --since and --retry-errors redo them.
RETRYABLE_KINDS = frozenset({"unreadable", "timeout", "crashed"})


@dataclass(frozen=True)
class RunOptions:
    batch_size: int = 32
    workers: int | None = None
    prefetch: int | None = None
    device: str = "auto"
    decode: str = "auto"  # where JPEGs are decoded: auto | cpu | gpu (batchrun.gpu_decode.resolve_decode)
    threads: int | None = None
    topk: int = 5
    embeddings: bool = False
    shard: Shard = field(default_factory=Shard)
    max_error_rate: float = 0.01
    part_rows: int | None = None  # rows per unit of the plan; None: the plan's, or DEFAULT_PART_ROWS
    overwrite: bool = False
    trt_cache: str | None = None
    progress: bool = False
    worker_nice: int | None = None  # a benchmarking knob; default +5 on the CPU, 0 with a GPU
    decode_timeout_s: float = DEFAULT_DECODE_TIMEOUT_S
    max_bytes: int = DEFAULT_MAX_BYTES
    since: str | None = None
    retry_errors: bool = False
    engine: str = "local"
    ray_address: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> RunOptions:
        return dataclasses.replace(self, **changes)

    def record(self) -> dict[str, Any]:
        """What OUT may keep of these options: JSON-ready, secrets left out."""
        values = dataclasses.asdict(self)
        values["shard"] = str(self.shard)
        values["storage_options"] = storage.redacted(self.storage_options)
        return values
