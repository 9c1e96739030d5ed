"""`--metrics-file PATH`: a run's counts and timings in Prometheus text format, for node_exporter.

Written with `prometheus_client` into its own registry and renamed into place
(`prometheus_client.write_to_textfile`), so node_exporter's textfile collector never reads
half a file. Written when the run ends, also when it stops on a fault: then
`skutag_run_success` is 0 and `skutag_run_exit_code` says why, which is what an operator
alerts on (README: exit codes). Labels: `out` and `shard`, so N shards can write N files.
"""

from __future__ import annotations

import os
import time
from typing import Any

from skutag.errors import SkutagError

from .options import RunOptions

# summary field -> (metric name, help)
GAUGES = {
    "rows": ("rows", "rows committed for this shard (resumed and new)"),
    "ok": ("rows_ok", "ok rows"),
    "errors": ("rows_error", "error rows"),
    "reused": ("rows_reused", "rows copied from --since / an earlier attempt"),
    "new": ("inputs_new", "inputs the --since run did not have"),
    "changed": ("inputs_changed", "inputs whose uri or version changed since --since"),
    "decoded": ("images_decoded", "images decoded by the whole shard"),
    "processed_rows": ("rows_processed", "rows committed by this attempt"),
    "repeats": ("deliveries_repeated", "task deliveries dropped as repeats"),
    "worker_restarts": ("worker_restarts", "times the decode workers were replaced"),
    "wall_s": ("wall_seconds", "wall time of this attempt"),
    "decode_s": ("decode_seconds", "CPU seconds spent reading and decoding"),
    "inference_s": ("inference_seconds", "seconds spent in inference"),
    "write_s": ("write_seconds", "seconds spent writing parts"),
    "images_per_s": ("images_per_second", "decoded images per wall second"),
    "error_rate": ("error_rate", "error rows / rows"),
}


def exit_code_of(exc: BaseException | None, summary: Any = None) -> int:
    if exc is None:
        return 3 if summary is not None and summary.exceeded_error_rate else 0
    return exc.exit_code if isinstance(exc, SkutagError) else 1


def write_metrics(
    path: str, summary: Any, out: str, options: RunOptions, failure: BaseException | None = None
) -> None:
    """Write the metrics of a finished (`summary`) or stopped (`failure`) run to `path`, atomically."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    labels = {"out": str(out), "shard": str(options.shard)}

    def gauge(name: str, help_text: str, value: float, **extra: str) -> None:
        metric = Gauge(f"skutag_run_{name}", help_text, [*labels, *extra], registry=registry)
        metric.labels(**labels, **extra).set(value)

    code = exit_code_of(failure, summary)
    gauge("success", "1 when the run finished with exit 0 (or was already complete)", int(code == 0))
    gauge("exit_code", "the exit code of skutag run", code)
    gauge("last_run_timestamp_seconds", "when the run ended (unix time)", time.time())
    if summary is not None:
        gauge(
            "complete",
            "1 when OUT/_SUCCESS exists: every unit of the plan committed",
            int(bool(summary.complete)),
        )
        for field, (name, help_text) in GAUGES.items():
            value = getattr(summary, field, None)
            if value is not None:
                gauge(name, help_text, float(value))
        kinds = Gauge(
            "skutag_run_errors_by_kind", "error rows by error_kind", [*labels, "kind"], registry=registry
        )
        for kind, count in summary.errors_by_kind.items():
            kinds.labels(**labels, kind=kind).set(count)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    write_to_textfile(path, registry)  # a temporary file renamed into place
