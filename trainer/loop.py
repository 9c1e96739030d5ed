"""One epoch of training and one pass of prediction: the small stateful core of the trainer.

`Engine` holds what a step needs (network, optimizer, scheduler, loss, AMP and scaler,
gradient clipping) and runs over batches shaped as `CatalogDataset` gives them
(`image`, `label`, `index`, `ok`, `error`). Samples whose file failed to load are masked
out of the loss (batches stay aligned) and reported. The optimizer and schedule
factories live here too, so the whole optimisation recipe reads in one place.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from skutag.trainer.config import TrainConfig
from skutag.trainer.distributed import sum_across
from torch import nn


def make_optimizer(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    params = list(params)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True
        )
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warm-up, then cosine decay to zero (or constant), per optimizer step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    steps_per_epoch: int,
    head_epochs: int = 0,
    head_steps_per_epoch: int | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per step. With a head phase (`head_epochs` on cached features, `head_steps_per_epoch` steps each:
    the cache may hold several views per photo) each phase has its own schedule: the head's over its
    epochs, then warm-up and decay again over the fine-tuning epochs."""
    per_head_epoch = steps_per_epoch if head_steps_per_epoch is None else head_steps_per_epoch
    head_phase = 0 < head_epochs < config.epochs
    head_steps = head_epochs * per_head_epoch if head_phase else 0
    tune_epochs = config.epochs - head_epochs if head_phase else config.epochs
    total, warmup = tune_epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < head_steps:
            return lr_factor(step, total_steps=head_steps, warmup_steps=0, schedule=config.schedule)
        return lr_factor(step - head_steps, total_steps=total, warmup_steps=warmup, schedule=config.schedule)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def amp_dtype(request: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 where the GPU supports it, else fp16; None (fp32) on the CPU or with `off`."""
    from skutag.errors import SkutagError

    if request == "off" or (request == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise SkutagError(f"--amp {request} needs CUDA; on the CPU use --amp off (or auto)")
    if request == "bf16" or (request == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


@dataclass
class EpochResult:
    loss: float
    images: int
    seconds: float
    failed: dict[int, str] = field(default_factory=dict)


@dataclass
class Predictions:
    labels: np.ndarray
    probs: np.ndarray
    indices: np.ndarray
    failed: dict[int, str] = field(default_factory=dict)
    heads: dict[str, np.ndarray] = field(default_factory=dict)  # with all_heads: each attribute head's logits


@dataclass
class Engine:
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    prepare: Callable[[torch.Tensor], torch.Tensor]  # batch["image"] -> model input on the device
    class_weights: torch.Tensor | None = None
    label_smoothing: float = 0.0
    clip_grad: float | None = None
    autocast_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    # with attribute heads (trainer.attribute_training): the net is called with all_heads=True and this
    # adds their loss, from every head's logits and the batch, to the label loss
    extra_loss: Callable[[dict[str, torch.Tensor], dict[str, Any]], torch.Tensor] | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def train_epoch(
        self, net: nn.Module, batches: Iterable[dict[str, Any]], advance: Callable[[int], None]
    ) -> EpochResult:
        """One pass of optimisation; the loss is the mean over every good sample of every process."""
        start = time.perf_counter()
        loss_sum, count, failed = torch.zeros((), device=self.device), 0, {}
        for batch in batches:
            ok = batch["ok"]
            failed.update(_failures(batch))
            x = self.prepare(batch["image"])
            y = batch["label"].to(self.device, non_blocking=True)
            mask = ok.to(self.device, non_blocking=True).float()
            with self.autocast():
                outputs = net(x) if self.extra_loss is None else net(x, all_heads=True)
            logits = outputs if self.extra_loss is None else outputs["label"]
            per_sample = nn.functional.cross_entropy(
                logits.float(), y, label_smoothing=self.label_smoothing, reduction="none"
            )
            weights = mask if self.class_weights is None else mask * self.class_weights[y]
            # Every process must run backward, even on a batch of failed files (DDP).
            loss = (per_sample * weights).sum() / weights.sum().clamp(min=1e-12)
            if self.extra_loss is not None:
                loss = loss + self.extra_loss(outputs, batch)
            self.optimizer.zero_grad(set_to_none=True)
            self._backward_and_step(loss, net)
            good = int(ok.sum())  # on the CPU: no device sync per step
            loss_sum += loss.detach() * good
            count += good
            advance(len(ok))
        loss_sum, count = sum_across([float(loss_sum), float(count)], self.device)
        return EpochResult(loss_sum / max(count, 1), int(count), time.perf_counter() - start, failed)

    def _backward_and_step(self, loss: torch.Tensor, net: nn.Module) -> None:
        params = [p for p in net.parameters() if p.requires_grad]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.clip_grad is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(params, self.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.clip_grad is not None:
                nn.utils.clip_grad_norm_(params, self.clip_grad)
            self.optimizer.step()
        self.scheduler.step()

    def predict(
        self,
        net: nn.Module,
        batches: Iterable[dict[str, Any]],
        advance: Callable[[int], None],
        all_heads: bool = False,
    ) -> Predictions:
        """Softmax probabilities for every good sample, in batch order; failed samples are listed. With
        `all_heads` the net is called with all_heads=True and each attribute head's logits are kept too."""
        net.eval()
        labels, probs, indices, failed = [], [], [], {}
        heads: dict[str, list[torch.Tensor]] = {}
        with torch.no_grad():
            for batch in batches:
                ok = batch["ok"]
                failed.update(_failures(batch))
                if ok.any():
                    x = self.prepare(batch["image"][ok])
                    with self.autocast():
                        outputs = net(x, all_heads=True) if all_heads else net(x)
                    logits = outputs["label"] if all_heads else outputs
                    for name, value in outputs.items() if all_heads else ():
                        if name != "label":
                            heads.setdefault(name, []).append(value.float().cpu())
                    probs.append(torch.softmax(logits.float(), dim=1).cpu())
                    labels.append(batch["label"][ok])
                    indices.append(batch["index"][ok])
                advance(len(ok))
        if not probs:
            return Predictions(np.empty(0, int), np.empty((0, 0)), np.empty(0, int), failed)
        return Predictions(
            torch.cat(labels).numpy(), torch.cat(probs).double().numpy(), torch.cat(indices).numpy(), failed,
            {name: torch.cat(parts).double().numpy() for name, parts in heads.items()},
        )  # fmt: skip


def _failures(batch: dict[str, Any]) -> dict[int, str]:
    ok = batch["ok"].tolist()
    return {
        int(i): e for i, e, good in zip(batch["index"].tolist(), batch["error"], ok, strict=True) if not good
    }


def merge_predictions(parts: list[Predictions]) -> Predictions:
    """One prediction per validation sample, in dataset order (DistributedSampler pads with repeats)."""
    indices = np.concatenate([p.indices for p in parts])
    _, first = np.unique(indices, return_index=True)
    failed = {k: v for p in parts for k, v in p.failed.items()}
    if len(indices) == 0:
        return Predictions(indices, np.empty((0, 0)), indices, failed)
    labels = np.concatenate([p.labels for p in parts])[first]
    probs = np.concatenate([p.probs for p in parts if len(p.probs)])[first]
    names = next((list(p.heads) for p in parts if p.heads), [])
    heads = {n: np.concatenate([p.heads[n] for p in parts if len(p.probs)])[first] for n in names}
    return Predictions(labels, probs, indices[first], failed, heads)
