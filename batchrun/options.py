"""`RunOptions`: every option of a batch run, declared once, with what each one is.

Each field's metadata says how the CLI shows it (`flag`, `help`, click `type`, a `convert`
from the flag's value), whether it is part of the run key (`key`: a rerun with another
value cannot continue an OUT) and whether its value is secret (`secret`: kept out of
`repr`, the Parquet metadata and `_summary.json`). `batchrun.cli` generates the click
options of `skutag run` from these fields; `api.run_key` takes `key_values()`; the Parquet
metadata and `_summary.json` keep `record()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from skutag import storage

from .plan.shard import Shard

DEFAULT_PART_ROWS = 10_000
DEFAULT_DECODE_TIMEOUT_S = 120.0
DEFAULT_LEASE_TTL_S = 120.0
# Bigger than any catalog photo (real ones are 0.1-2 MB) and than a 50-megapixel 8-bit TIFF,
# small enough that a mislabelled video or disk image never reaches a decoder.
DEFAULT_MAX_BYTES = 256 << 20
# Error kinds that may pass when tried again: --since and --retry-errors redo them.
RETRYABLE_KINDS = frozenset({"unreadable", "timeout", "crashed"})


def option(default: Any = None, help: str = "", *, flag: str | None = None, key: bool = False,
           secret: bool = False, **cli: Any) -> Any:  # fmt: skip
    """A RunOptions field: its default and what the CLI and the run key make of it.

    `flag`: the CLI name(s), "--a[,--alias]" (None: not a CLI option of `skutag run`); `cli`:
    click arguments (`type`, `is_flag`, `multiple`, `metavar`, `secondary` for --x/--no-x, and
    `convert`, a function from the flag's value to the field's)."""
    meta = {"help": help, "flag": flag, "key": key, "secret": secret, "cli": cli}
    if callable(default):  # a class or function: the default is a fresh instance
        return field(default_factory=default, metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


def key_values(pairs: tuple[str, ...] | list[str], flag: str) -> dict[str, str]:
    """KEY=VALUE pairs as strings, as delta-rs takes its storage options; a pair without `=` is refused."""
    import click

    found = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{flag} {pair!r}: expected KEY=VALUE")
        found[key] = value
    return found


def _choice(*values: str):
    import click

    return click.Choice(values)


def _ints(low: int):
    import click

    return lambda: click.IntRange(min=low)


def _floats(low: float, high: float | None = None):
    import click

    return lambda: click.FloatRange(low, high)


def _engine_choice():
    from .engines.base import ENGINES  # the registry: one list of engine names

    return _choice(*ENGINES)


@dataclass(frozen=True)
class RunOptions:
    batch_size: int = option(32, "Images per batch.", flag="--batch-size", type=_ints(1))
    workers: int | None = option(
        None, "Decode worker processes (default: chosen for this machine). 0: no pool; each input is decoded "
        "in one child process with the time limit, so a decoder that hangs or crashes still costs one row.", flag="--workers", type=_ints(0),
    )  # fmt: skip
    prefetch: int | None = option(None, "Batches each worker keeps ready.", flag="--prefetch", type=_ints(1))
    device: str = option(
        "auto", "Where to compute. `auto` uses CUDA when it works and says when it falls back; naming a "
        "device fails loudly if it is not usable.", flag="--device",
        type=lambda: _choice("auto", "cpu", "cuda", "tensorrt"),
    )  # fmt: skip
    decode: str = option(
        "auto", "Where JPEGs are decoded, resized and cropped: gpu (nvJPEG through torchvision; other formats "
        "and files it refuses go through the CPU path), cpu, or auto (gpu when the run predicts on CUDA or "
        "TensorRT and torchvision can decode there). gpu when that is not possible fails in one line.",
        flag="--decode", type=lambda: _choice("auto", "cpu", "gpu"),
    )  # fmt: skip
    threads: int | None = option(
        None, "ONNX Runtime intra-op threads on the CPU.", flag="--threads", type=_ints(1)
    )
    topk: int = option(5, "Labels kept per image.", flag="--topk", key=True, type=_ints(1))
    embeddings: bool = option(
        False, "Add the model's `embedding` output as a column.", flag="--embeddings", key=True, is_flag=True
    )
    shard: Shard = option(
        Shard, "Process slice I of N (zero-based) of the plan's units; N shards may share one --out.",
        flag="--shard", key=True, convert=Shard.parse, metavar="I/N", cli_default="0/1",
    )  # fmt: skip
    max_error_rate: float = option(
        0.01, "Above this fraction of failed inputs the run still writes every row but exits 3.",
        flag="--max-error-rate", type=_floats(0, 1),
    )  # fmt: skip
    part_rows: int | None = option(
        None, f"Rows per unit of the plan, and so per Parquet part (default {DEFAULT_PART_ROWS:,}; a crash "
        "redoes at most the units in progress). Fixed when the plan is made.",
        flag="--part-rows,--part-size", type=_ints(1),
    )  # fmt: skip
    overwrite: bool = option(
        False, "Replace an existing, different or complete run in --out.", flag="--overwrite", is_flag=True
    )
    trt_cache: str | None = option(
        None, "TensorRT engine and timing cache directory (default ~/.cache/skutag/tensorrt).",
        flag="--trt-cache",
    )  # fmt: skip
    progress: bool = option(
        False, "Show progress on stderr.", flag="--progress", secondary="--no-progress", cli_default=True
    )
    worker_nice: int | None = None  # a benchmarking knob; default +5 on the CPU, 0 with a GPU
    decode_timeout_s: float = option(
        DEFAULT_DECODE_TIMEOUT_S, "Seconds one input may take to read and decode; past it the worker is "
        "killed and the input is a `timeout` row.", flag="--decode-timeout", type=_floats(0.1),
    )  # fmt: skip
    max_bytes: int = option(
        DEFAULT_MAX_BYTES, "Larger files are `too_large` rows, judged from their size before any read.",
        flag="--max-bytes", type=_ints(1),
    )  # fmt: skip
    since: str | None = option(
        None, "An earlier, complete OUT (it has _SUCCESS): copy its rows for inputs whose uri and version "
        "are unchanged (same model), predict only new and changed ones.", flag="--since",
    )  # fmt: skip
    since_incomplete: bool = option(
        False, "Accept a --since run without _SUCCESS (its committed rows only).",
        flag="--since-incomplete", is_flag=True,
    )  # fmt: skip
    retry_errors: bool = option(
        False, "Rerun: predict again committed error rows of retryable kinds (unreadable, timeout, crashed).",
        flag="--retry-errors", is_flag=True,
    )  # fmt: skip
    engine: str = option(
        "local", "local: DataLoader workers and one ONNX Runtime session; ray: Ray Data on a Ray cluster.",
        flag="--engine", type=_engine_choice,
    )  # fmt: skip
    ray_address: str | None = option(
        None, "--engine ray: a cluster address or `auto`; without it a local Ray is started and stopped.",
        flag="--ray-address",
    )  # fmt: skip
    storage_options: dict[str, Any] = option(
        dict, "fsspec option for object storage, repeatable (dotted keys nest: config_kwargs.read_timeout=10). "
        "Values are never written to OUT or printed.", flag="--storage-option", secret=True, multiple=True,
        metavar="KEY=VALUE", convert=storage.parse_options,
    )  # fmt: skip
    lease_ttl_s: float = option(
        DEFAULT_LEASE_TTL_S, "Seconds a shard's lease (OUT/_lease*.json) lives unless renewed; a process "
        "that dies without releasing it blocks its shard for this long.", flag="--lease-ttl",
        type=_floats(1.0),
    )  # fmt: skip
    metrics_file: str | None = option(
        None, "Write the run's counts and timings here in Prometheus text format (node_exporter textfile "
        "collector), atomically, also when the run stops on a fault.", flag="--metrics-file",
    )  # fmt: skip
    table: str | None = option(
        None, "After a successful, complete run: merge OUT into the Delta Lake table at this URI (a path, "
        "s3:// or gs://), as `skutag publish OUT --table URI` does.", flag="--table", metavar="URI",
    )  # fmt: skip
    table_options: dict[str, str] = option(
        dict, "delta-rs storage option of --table, repeatable (AWS_REGION=..., conditional_put=etag). "
        "Values are never written to OUT or printed.", flag="--table-option", secret=True, multiple=True,
        metavar="KEY=VALUE", convert=lambda pairs: key_values(pairs, "--table-option"),
    )  # fmt: skip
    keep_removed: bool = option(
        False, "--table: keep the rows of ids that left the plan, with `removed_at` set, instead of "
        "deleting them.", flag="--keep-removed", is_flag=True,
    )  # fmt: skip

    def replace(self, **changes: Any) -> RunOptions:
        return dataclasses.replace(self, **changes)

    def key_values(self) -> dict[str, Any]:
        """The options that are part of the run key (metadata `key`), as the key stores them."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if not f.metadata.get("key"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, Shard):
                values.update(shard_index=value.index, shard_count=value.count)
            else:
                values[f.name] = value
        return values

    def record(self) -> dict[str, Any]:
        """What OUT may keep of these options: JSON-ready, secrets by key only."""
        values = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret"):
                value = storage.redacted(value)
            elif isinstance(value, Shard):
                value = str(value)
            values[f.name] = value
        return values
