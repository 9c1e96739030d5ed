"""Features beside the final pooled ones: colour statistics of the pixels and pooled intermediate stages.

Globally pooled ImageNet features keep little of a garment's colour (issue 30). `colour_statistics`
computes, from the normalised network input and the card's mean and std, simple statistics of the
centre crop's RGB pixels in [0, 1] with tensor ops only (so they export into every format's graph):
per channel mean and std, and a soft joint RGB histogram (`BINS` triangular bins per channel,
BINS**3 cells, each cell the mean over pixels of the product of the three memberships, times
BINS**3 so a uniform image gives 1 per cell). `StageTaps` keeps the global average of chosen stages'
outputs during a forward pass (forward hooks), for the experiments that measure them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from skutag.normalize import pixel_scale

BINS = 4
GRID = 28  # the average-pooled grid the statistics read (224 px: 8 x 8 pixel cells)
CROP = 0.5  # the centre crop's side, a fraction of the grid's


def colour_dims(bins: int = BINS) -> int:
    return 6 + bins**3


def colour_statistics(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, bins: int = BINS
) -> torch.Tensor:
    """`[N, 6 + bins**3]` float32 from normalised `[N, 3, H, W]` `x` (mean, std: pixel units, `[1, 3, 1, 1]`).

    The first op is an average pooling of the input to a `GRID` x `GRID` grid, and every mean after it is
    a sum divided by a constant: walking back from the outputs, an int8 export's float tail (exporter.tail)
    stops at that pooling, so everything the statistics compute stays float."""
    h, w = x.shape[2], x.shape[3]
    grid = nn.functional.avg_pool2d(x.float(), kernel_size=(max(1, h // GRID), max(1, w // GRID)))
    gh, gw = grid.shape[2], grid.shape[3]
    top, left = int(gh * (1 - CROP) / 2), int(gw * (1 - CROP) / 2)
    crop = grid[:, :, top : gh - top, left : gw - left]
    rgb = (crop * std + mean) / 255.0  # pixels in [0, 1]
    flat = rgb.flatten(2)  # [N, 3, P]
    count = float(flat.shape[2])
    average = flat.sum(2) / count
    spread = torch.sqrt(((flat - average.unsqueeze(2)) ** 2).sum(2) / count + 1e-6)
    centres = torch.linspace(0.0, 1.0, bins, device=x.device, dtype=flat.dtype).view(1, 1, bins, 1)
    member = torch.relu(1.0 - (flat.unsqueeze(2) - centres).abs() * (bins - 1))  # [N, 3, bins, P]
    r, g, b = member[:, 0], member[:, 1], member[:, 2]
    joint = r.unsqueeze(2).unsqueeze(3) * g.unsqueeze(1).unsqueeze(3) * b.unsqueeze(1).unsqueeze(2)
    histogram = joint.flatten(1, 3).sum(2) * (float(bins**3) / count)  # [N, bins**3]
    return torch.cat([average, spread, histogram], dim=1)


class ColourStatistics(nn.Module):
    """`colour_statistics` with the card's mean and std as buffers (not in the state: the card has them)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, bins: int = BINS) -> None:
        super().__init__()
        self.bins = bins
        self.dims = colour_dims(bins)
        self.register_buffer("mean", mean.detach().clone().float().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.detach().clone().float().view(1, 3, 1, 1), persistent=False)

    @classmethod
    def for_card(cls, mean: Sequence[float], std: Sequence[float]) -> ColourStatistics:
        """From a card's `mean` and `std` (0-1 units, as the card holds them)."""
        pixel_mean, pixel_std = pixel_scale(tuple(mean), tuple(std))
        return cls(torch.from_numpy(pixel_mean), torch.from_numpy(pixel_std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return colour_statistics(x, self.mean, self.std, self.bins)


class StageTaps:
    """Forward hooks keeping the global average pool of each named submodule's output, in order."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.names = list(names)
        self.pooled: dict[str, torch.Tensor] = {}
        self.handles = [model.get_submodule(n).register_forward_hook(self._keep(n)) for n in self.names]

    def _keep(self, name: str):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            self.pooled[name] = output.float().mean((2, 3))

        return hook

    def take(self) -> torch.Tensor:
        """The pooled stages of the last forward pass, concatenated `[N, sum of channels]`."""
        return torch.cat([self.pooled.pop(n) for n in self.names], dim=1)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
