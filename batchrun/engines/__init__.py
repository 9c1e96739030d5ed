"""Engines run a shard's WorkList: `local` (DataLoader + one ORT session) and `ray` (Ray Data).

Both implement one `Engine` protocol and are chosen by name from `ENGINES` (imported only
when chosen: `--engine local` never imports Ray). Both take the same plan, decode through
`skutag.images`, and hand every result to the same `batchrun.writer.UnitWriter`, which
commits units by task id under the same names. An exception from the model is not an
input's fault: both engines stop the run with `inference_failed` (exit 4).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

from skutag.errors import SystemicFault

if TYPE_CHECKING:
    from ..model import ModelContract
    from ..options import RunOptions
    from ..work import WorkList
    from ..writer import UnitWriter
    from .local import Stats


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
