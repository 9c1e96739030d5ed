"""What every engine shares: the `Engine` protocol, its `Stats`, `committing`, the `ENGINES` registry.

Engines run a shard's WorkList: `local` (DataLoader + one ORT session) and `ray` (Ray Data).
Both implement one `Engine` protocol and are chosen by name from `ENGINES` (imported only
when chosen: `--engine local` never imports Ray). Both take the same plan, decode through
`skutag.images`, and hand every result to the same `batchrun.commit.writer.UnitWriter`, which
commits units by task id under the same names. An exception from the model is not an
input's fault: both engines stop the run with `inference_failed` (exit 4).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from skutag.errors import SystemicFault

if TYPE_CHECKING:
    from ..commit.writer import UnitWriter
    from ..options import RunOptions
    from ..plan.work import WorkList
    from ..predict.model import ModelContract


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
    repeats: int = 0  # task deliveries the writer dropped as repeats
    decode: str = "cpu"  # where JPEGs were decoded: cpu | cuda
    gpu_decode_s: float = 0.0  # wall seconds of the GPU decode stage
    gpu_decoded: int = 0  # images decoded on the GPU
    cpu_fallbacks: int = 0  # JPEGs the GPU handed back to the CPU path
    device: str = "none"
    providers: list[str] = field(default_factory=list)
    fallback_reason: str | None = None


class Engine(Protocol):
    def __call__(
        self, contract: ModelContract, work: WorkList, writer: UnitWriter, options: RunOptions
    ) -> Stats:
        """Decode and predict every task of `work`, start `writer` and hand it every result; return stats."""
        ...


# name -> "module:function"; the registry `--engine` chooses from.
ENGINES: dict[str, str] = {
    "local": "skutag.batchrun.engines.local:run_local",
    "ray": "skutag.batchrun.engines.ray:run_ray",
}


def get_engine(name: str) -> Engine:
    module, attr = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), attr)


def inference_failed(exc: BaseException) -> SystemicFault:
    """The one-line stop for a model that raises: every batch would fail the same way."""
    text = " ".join(str(exc).split())[:300]
    return SystemicFault(
        f"stopped: inference failed ({type(exc).__name__}: {text}); nothing more was published"
    )


@contextlib.contextmanager
def committing(writer: UnitWriter, stats: Stats) -> Iterator[None]:
    """Around an engine's work: close the writer after it (the last commits), abort it on any error,
    and record the writer's time and committed rows in `stats` either way."""
    try:
        yield
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        stats.write_s = writer.seconds
        stats.rows = writer.committed_rows
