"""`last.ckpt`: the full training state after an epoch, as plain data `torch.load(weights_only=True)` accepts.

Model, optimizer, scheduler and scaler state dicts, the epoch, the history so far, the
best epoch, the RNG states of torch (CPU and CUDA), numpy and Python's `random` (all
converted to tensors, lists and numbers), and the resolved options. Written atomically.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skutag.errors import InputError, SkutagError
from skutag.fsio import atomic_path

LAST = "last.ckpt"
# Options a resumed run must keep: changing them would make a different run, not a continuation.
FIXED_ON_RESUME = (
    "epochs",
    "arch",
    "attributes",
    "attribute_weight",
    "split_by",
)  # split_by: another split would mix validation in


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save({**state, "rng": rng_state()}, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--resume: no {LAST} in {path.parent}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from exc


def check_resumable(saved: dict[str, Any], options: dict[str, Any]) -> list[str]:
    """Refuse a resume that changes what the run is; return the names of other options that changed."""
    for name in FIXED_ON_RESUME:
        if saved.get(name) != options.get(name):
            raise SkutagError(
                f"cannot resume: --{name.replace('_', '-')} was {saved.get(name)!r} in the saved run and is "
                f"{options.get(name)!r} now; use the same value or start a new --out"
            )
    ignored = {"resume", "workers", "device", "out", "data"}
    return sorted(k for k in options if k not in ignored and saved.get(k) != options.get(k))


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
