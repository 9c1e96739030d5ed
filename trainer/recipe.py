"""The training recipe's phases: which epochs train the head on cached features, and when fine-tuning stops.

A pretrained backbone trains in two phases (benchmarks/RESULTS.md, model_table, chose them):

1. **head**: `head_epochs` epochs of the classifier alone on backbone features cached once,
   for every training photo under each of `views` (`trainer.views`: the photo, mirrored, ...);
2. **fine-tune**: the freeze policy's layers on augmented pixels for the remaining epochs,
   kept only while validation shows it pays: once `tune_patience` fine-tuning epochs in a row
   bring no better validation figure than the best so far (the head's included), the phase
   stops and the best weights stay what they were (the head's, when fine-tuning never beat it).
   A fine-tuning epoch counts as better only by more than `tune_margin` (default: one validation
   image's worth, 1 / the validation images, for accuracy and macro F1): on 55 validation photos a
   one-photo win is noise, and such epochs lost 7-9 points held out (RESULTS.md, model_table 0.4).

Without a head phase (random weights, `--freeze backbone`, `--cache-features`, torchrun)
there is nothing to compare fine-tuning with: every epoch runs, as `--patience` allows.
"""

from __future__ import annotations

from dataclasses import dataclass

from skutag.trainer.config import TrainConfig
from skutag.trainer.views import parse_views


@dataclass(frozen=True)
class Phases:
    epochs: int
    head_epochs: int  # 0: no head phase
    views: tuple[str, ...]  # what the head's cache holds per training photo
    tune_patience: int | None  # None: fine-tuning runs all its epochs
    tune_margin: float | None = None  # None: one validation image's worth (higher-is-better metrics)

    def is_head(self, epoch: int) -> bool:
        """True when `epoch` (1-based) trains the head on cached features."""
        return epoch <= self.head_epochs

    def stop_tuning(self, epoch: int, best_epoch: int) -> bool:
        """After `epoch`: True when fine-tuning has not beaten the best validation figure (at `best_epoch`)
        for `tune_patience` epochs, counting from the later of the head's last epoch and the best one."""
        if self.tune_patience is None or self.head_epochs == 0 or self.is_head(epoch):
            return False
        return epoch - max(best_epoch, self.head_epochs) >= self.tune_patience

    def margin(self, epoch: int, val_images: int, higher_is_better: bool) -> float:
        """How much `epoch` must beat the best validation figure by to count as better: 0 for head epochs
        and without the fine-tuning gate; else --tune-margin, by default 1 / `val_images` (0 for a loss)."""
        if self.tune_patience is None or self.head_epochs == 0 or self.is_head(epoch):
            return 0.0
        if self.tune_margin is not None:
            return self.tune_margin
        return 1.0 / max(val_images, 1) if higher_is_better else 0.0


def phases(config: TrainConfig, *, distributed: bool = False) -> Phases:
    """The phases `config` asks for; under torchrun there is no head phase (its cache is one process's)."""
    head = 0 if distributed else config.resolved_head_epochs()
    patience = config.tune_patience if config.tune_patience else None
    return Phases(config.epochs, head, parse_views(config.cache_views), patience, config.tune_margin)
