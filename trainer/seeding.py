"""Reproducibility: one seed for Python, numpy and torch, DataLoader workers, and a generator seed per epoch.

Seeding the loader's generator per epoch (not once) makes epoch N's shuffling and worker
seeds a function of (seed, epoch, rank) alone, so a resumed run shuffles exactly as an
uninterrupted one; the global RNG states are restored from last.ckpt for the rest.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: numpy and random follow the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return seed * 1_000_003 + epoch * 7919 + rank
