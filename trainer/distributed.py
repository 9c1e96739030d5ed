"""Where training runs: the torch device (auto/cpu/cuda, never a silent fallback) and DDP under torchrun.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; with WORLD_SIZE > 1 the process group
is initialised with NCCL on CUDA and gloo on the CPU. Only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from skutag.errors import DeviceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Process:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(requested: str, local_rank: int = 0) -> tuple[torch.device, str]:
    """The device to train on and a sentence saying why; `cuda` without CUDA raises DeviceError."""
    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        raise DeviceError(
            "--device cuda was requested but torch sees no usable CUDA device "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); pass --device cpu"
        )
    if requested == "cpu" or (requested == "auto" and not available):
        reason = "requested" if requested == "cpu" else "auto: torch sees no CUDA device"
        return torch.device("cpu"), f"device: cpu ({reason})"
    device = torch.device("cuda", local_rank)
    return device, f"device: {device} ({torch.cuda.get_device_name(device)}, {requested})"


def start(device_request: str) -> tuple[Process, torch.device, str]:
    """Read torchrun's environment, pick the device, and join the process group when there are several."""
    process = Process(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )
    device, reason = resolve_device(device_request, process.local_rank)
    if process.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        reason += f"; DDP rank {process.rank} of {process.world_size} ({dist.get_backend()})"
    return process, device, reason


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def sum_across(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over all processes (identity without DDP)."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision, for every process."""
    if not dist.is_initialized():
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def gather_to_main(obj: object) -> list[object] | None:
    """Every process's `obj`, on rank 0 (None elsewhere); `[obj]` without DDP."""
    if not dist.is_initialized():
        return [obj]
    parts: list[object] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, parts, dst=0)
    return parts


def broadcast_model(model: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers, on every process."""
    if not dist.is_initialized():
        return
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)
