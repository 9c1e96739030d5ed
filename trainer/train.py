"""`skutag train`: from DATA to a run dir, read top to bottom.

set up (device, DDP, seed, data, card, model, freeze policy, loaders, optimizer) ->
resume from last.ckpt if asked -> one epoch at a time (train, validate on rank 0,
history.csv, best.safetensors, last.ckpt, early stopping) -> the report of the best
weights (trainer.train_end, which `Trainer` inherits). Every file is written by rank 0 only, atomically.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skutag.trainer import checkpoint, distributed
from skutag.trainer.adapt_bn import adapt_batchnorm
from skutag.trainer.attribute_epochs import (
    FeatureHeads,
    cached_loss,
    epoch_heads,
    history_columns,
    history_fields,
    selection_score,
)
from skutag.trainer.attribute_training import AttributeTraining
from skutag.trainer.attributes import label_column, parse_attributes
from skutag.trainer.augment import Normalizer, train_transform
from skutag.trainer.config import TrainConfig, default_workers
from skutag.trainer.data import CatalogDataset, Splits, decision_samples, find_splits, with_decisions
from skutag.trainer.display import Display
from skutag.trainer.features import (
    FrozenBackboneClassifier,
    cached_batches,
    extract_features,
    split_head,
)
from skutag.trainer.freeze import (
    apply_freeze,
    check_policy,
    fully_frozen_backbone,
    head_prefixes,
    resolve_policy,
    set_train_mode,
)
from skutag.trainer.head_fit import fit_logistic
from skutag.trainer.loop import (
    Engine,
    Predictions,
    amp_dtype,
    make_optimizer,
    make_scheduler,
    merge_predictions,
)
from skutag.trainer.metrics import SELECTABLE, summary_metrics
from skutag.trainer.model import Built, build
from skutag.trainer.recipe import phases
from skutag.trainer.report import write_csv
from skutag.trainer.seeding import epoch_seed, seed_everything, seed_worker
from skutag.trainer.stage_stats import stage_names, stage_root
from skutag.trainer.train_end import TrainerEnd
from skutag.trainer.views import ViewsDataset, flat_views
from skutag.trainer.weights import BEST, save_weights
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

from skutag.card import DOMAIN_SCORE, NORMALIZATIONS, ModelCard
from skutag.errors import InputError, SkutagError
from skutag.fsio import atomic_write_json, check_output_dir

HISTORY_COLUMNS = [
    "epoch", "train_loss", "val_loss", "accuracy", "top5_accuracy", "macro_precision", "macro_recall",
    "macro_f1", "lr", "train_images", "seconds", "images_per_s",
]  # fmt: skip


@dataclass
class RunState:
    """What changes from epoch to epoch and goes into last.ckpt."""

    epoch: int = 0  # last finished epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float | None = None
    stopped_early: bool = False
    failed: dict[str, str] = field(default_factory=dict)  # path -> error, train and val


def train(config: TrainConfig) -> Path:
    """Train per `config`; returns the run dir."""
    config.check()
    process, device, device_line = distributed.start(config.device)
    display = Display(enabled=process.is_main)
    try:
        display.say(device_line)
        return Trainer(config, process, device, display).run()
    finally:
        distributed.stop()


class Trainer(TrainerEnd):
    def __init__(
        self, config: TrainConfig, process: distributed.Process, device: torch.device, display: Display
    ) -> None:
        self.config, self.process, self.device, self.display = config, process, device, display
        self.out = Path(config.out)
        check_output_dir(self.out)
        self.ckpt_path = self.out / checkpoint.LAST
        if self.ckpt_path.exists() and not config.resume:
            raise InputError(
                f"{self.out} already holds a run ({checkpoint.LAST}); pass --resume or another --out"
            )
        if config.resume and not self.ckpt_path.exists():
            raise InputError(f"--resume: {self.out} has no {checkpoint.LAST} to resume from")
        explicit_cache = config.cache_features or bool(config.head_epochs)
        if process.distributed and (explicit_cache or config.balance == "sampler"):
            raise InputError(
                "--cache-features, --head-epochs and --balance sampler run on one process, not under torchrun"
            )
        seed_everything(config.seed)
        # a manifest without `label`: an attribute column stands in as the label head (trainer.attributes)
        self.label_column = None
        if config.attributes is not None and Path(config.data).is_file():
            self.label_column = label_column(config.data, parse_attributes(config.attributes))
        self.splits = find_splits(
            config.data, val_dir=config.val, val_split=config.val_split, seed=config.seed,
            split_by=config.split_by, label_column=self.label_column or "label",
        )  # fmt: skip
        if config.decisions:
            decided = decision_samples(config.decisions)
            self.splits = with_decisions(self.splits, decided)
            labelled = sum(1 for sample in decided.values() if sample)
            self.display.say(
                f"decisions: {labelled} photos labelled by people, {len(decided) - labelled} not products "
                f"(left out), from {len(config.decisions)} OUT(s)"
            )
        self.classes = self.splits.classes
        self.display.say(
            f"data: {len(self.splits.train)} train / {len(self.splits.val)} val images, {len(self.classes)} classes"
        )
        # None without --attributes (or when the one attribute is the label head's)
        self.attrs = AttributeTraining.create(config, self.splits, exclude=self.label_column)
        if self.label_column is not None:
            self.display.say(
                f"{config.data} has no label column: the label head learns {self.label_column!r} "
                "(skutag run's label and score columns hold it)"
            )
        self.history_columns = HISTORY_COLUMNS + history_columns(self.attrs)
        # what picks the best epoch: the label's --best-metric, or with heads trainer.attribute_epochs' score
        self.selected = config.best_metric
        if self.attrs is not None:
            self.display.say(self.attrs.describe())
            self.selected = f"best_score (mean of {config.best_metric} and each attribute head's map)"
        built = build(config.arch, len(self.classes), config.weights)
        self.display.say(f"model: {config.arch}, weights: {built.weights_source}")
        self.card = self._card(self.splits, built)
        self.model = built.model.to(self.device)
        self.channels_last = self.device.type == "cuda" and not config.cache_features
        torch.backends.cudnn.benchmark = (
            self.device.type == "cuda"
        )  # fixed input size: pick the fastest convs
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.policy = ""
        self.phases = phases(
            config, distributed=process.distributed
        )  # head on cached views, then fine-tuning
        self.head_epochs = self.phases.head_epochs
        self.freeze = resolve_policy(self.model, config.freeze, config.pretrained)
        check_policy(self.model, self.freeze)  # before the head epochs, not after them
        if self.attrs is not None:  # one backbone, the label head and a head per attribute
            self.model, self.freeze = self.attrs.wrap(self.model, self.freeze, self.card)
            self.model = self.model.to(self.device)
        # the stages whose feature statistics the review queue's domain score reads (--ood-score
        # stage-statistics; trainer.review), else (): the cosine
        self.domain_stages = stage_names(stage_root(self.model)) if config.ood_score == DOMAIN_SCORE else ()
        if config.ood_score == DOMAIN_SCORE and not self.domain_stages:
            raise InputError(
                f"--ood-score {DOMAIN_SCORE}: skutag knows no stages of {config.arch}; use --ood-score cosine"
            )
        self.cached = False  # this epoch trains the head on cached features
        self.normalizer = Normalizer(self.card).to(self.device)
        self._make_data()
        self.engine = self._engine()
        self.state = RunState()

    # -- setup ---------------------------------------------------------------

    def _card(self, splits: Splits, built: Built) -> ModelCard:
        """The card: preprocessing from the weights (torchvision's recipe or timm's pretrained_cfg, corrected
        by the weight source), unless --image-size / --normalize say otherwise."""
        c, p = self.config, built.preprocessing
        size = c.image_size or p.image_size
        if c.normalize == "auto":
            normalize, mean, std = p.normalize, p.mean, p.std
        else:
            normalize, (mean, std) = c.normalize, NORMALIZATIONS[c.normalize]
        provenance = {
            "options": c.to_dict(),
            "weights": built.weights_source,
            # where the preprocessing came from: the family's recipe (timm: pretrained_cfg), as built
            "preprocessing": {"family": p.family, "crop_pct": p.crop_pct, "input_size": p.image_size},
            "train_images": len(splits.train),
            "val_images": len(splits.val),
            "torch": torch.__version__,
            "device": self.device.type,
            "world_size": self.process.world_size,
        } | ({} if self.label_column is None else {"label_column": self.label_column})
        return ModelCard(
            arch=c.arch, classes=tuple(splits.classes), image_size=size, resize_size=p.resize_size(size),
            normalize=normalize, mean=mean, std=std, interpolation=p.interpolation, provenance=provenance,
        )  # fmt: skip

    def _prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalizer(images.to(self.device, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _prepare_features(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(self.device, non_blocking=True)

    def _make_data(self) -> None:
        c, index = self.config, {name: i for i, name in enumerate(self.classes)}
        workers = default_workers() if c.workers is None else c.workers
        train_set = CatalogDataset(
            self.splits.train, index, self.card, train_transform(c.augment, self.card.image_size)
        )
        val_set = CatalogDataset(self.splits.val, index, self.card)
        self.generator = torch.Generator()
        sampler = None
        if self.process.distributed:
            sampler = DistributedSampler(train_set, seed=c.seed, shuffle=True)
        elif c.balance == "sampler":
            counts = np.bincount(train_set.labels, minlength=len(self.classes))
            weights = 1.0 / counts[train_set.labels]
            sampler = WeightedRandomSampler(weights.tolist(), len(train_set), generator=self.generator)
        loader_args = dict(
            batch_size=c.batch_size, num_workers=workers, pin_memory=self.device.type == "cuda",
            worker_init_fn=seed_worker, generator=self.generator,
        )  # fmt: skip
        self.train_loader = DataLoader(
            train_set, shuffle=sampler is None and not c.cache_features, sampler=sampler, **loader_args
        )
        val_sampler = DistributedSampler(val_set, shuffle=False) if self.process.distributed else None
        self.val_loader = DataLoader(val_set, shuffle=False, sampler=val_sampler, **loader_args)
        self.train_labels = train_set.labels
        self.train_cache = self.val_cache = None
        if c.adapt_bn:
            # Eval pixels in file order: deterministic, so a resumed run recomputes the same statistics.
            adapt_set = CatalogDataset(self.splits.train, index, self.card)
            adapt_loader = DataLoader(adapt_set, shuffle=False, batch_size=c.batch_size, num_workers=workers)
            seen = adapt_batchnorm(self.model, adapt_loader, self._prepare_images)
            self.display.say(f"BatchNorm statistics recomputed on {seen} training images (--adapt-bn)")
        if self.head_epochs > 0:
            body, self.head = split_head(self.model)
            # The head phase sees fixed views of the eval pixels (cached once, trainer.views); random
            # augmentation starts with the fine-tuning. Validation sees the eval pixels alone.
            views = self.phases.views
            plain = ViewsDataset(CatalogDataset(self.splits.train, index, self.card), views)
            self.display.say(
                f"caching backbone features of {len(views)} view(s) ({', '.join(views)}) of the training photos "
                f"and of the validation photos for {self.head_epochs} head epochs"
            )
            # the stage statistics beside the features: the review queue's domain score (trainer.review)
            stages = self.domain_stages
            self.train_cache = extract_features(
                body, flat_views(DataLoader(plain, **loader_args)), self._prepare_images, stages
            )
            self.val_cache = extract_features(body, self.val_loader, self._prepare_images, stages)
            self.display.say(f"cached {tuple(self.train_cache.features.shape)} training features")
            self._check_loaded(len(self.train_cache.labels), self.train_cache.failed, self.splits.train)
        head_batches = -(-len(self.train_cache.labels) // c.batch_size) if self.train_cache is not None else 0
        # the Engine's optimizer steps in one head epoch: none when L-BFGS fits the head
        self.head_steps_per_epoch = head_batches if c.head_solver == "adam" else 0
        self.steps_per_epoch = head_batches if c.cache_features else len(self.train_loader)

    def _engine(self) -> Engine:
        c = self.config
        weights = None
        if c.balance == "loss":
            counts = np.bincount(self.train_labels, minlength=len(self.classes)).astype(np.float64)
            weights = torch.tensor(
                len(self.train_labels) / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32
            )
            weights = weights.to(self.device)
        head = head_prefixes(self.model)
        named = list(self.model.named_parameters())
        scale = c.backbone_lr_scale if c.pretrained else 1.0  # a random backbone learns at the head's pace
        groups = [
            {"params": [p for n, p in named if not n.startswith(head)], "lr": c.lr * scale},
            {"params": [p for n, p in named if n.startswith(head)], "lr": c.lr},
        ]
        optimizer = make_optimizer([g for g in groups if g["params"]], c)
        dtype = amp_dtype(c.amp, self.device)
        if dtype is not None:
            self.display.say(f"mixed precision: {dtype}, channels-last: {self.channels_last}")
        return Engine(
            optimizer=optimizer,
            scheduler=make_scheduler(
                optimizer, c, self.steps_per_epoch, self.head_epochs, self.head_steps_per_epoch
            ),
            device=self.device,
            prepare=self._prepare_images,
            class_weights=weights,
            label_smoothing=c.label_smoothing,
            clip_grad=c.clip_grad,
            autocast_dtype=dtype,
            scaler=torch.amp.GradScaler("cuda") if dtype == torch.float16 else None,
        )

    def _set_policy(self, epoch: int) -> None:
        """Apply the freeze policy of `epoch` (gradual unfreezing) and build the network the loop trains."""
        c = self.config
        self.cached = epoch <= self.head_epochs
        if self.cached:
            policy = "backbone"
        else:
            policy = "none" if c.unfreeze_at is not None and epoch >= c.unfreeze_at else self.freeze
        self.engine.prepare = self._prepare_features if self.cached else self._prepare_images
        self.engine.extra_loss = self.attrs.loss if self.attrs is not None and not self.cached else None
        if policy == self.policy:
            return
        summary = apply_freeze(self.model, policy)
        self.policy = policy
        self.display.say(
            f"epoch {epoch}: --freeze {policy}: {summary.trainable:,} trainable, {summary.frozen:,} frozen parameters"
        )
        if self.cached:
            self.train_module, self.eval_module = self.head, self.head
            if self.attrs is not None:  # validation reads every head from the cached features
                self.eval_module = FeatureHeads(self.model)
        elif fully_frozen_backbone(self.model) and self.attrs is None:
            self.train_module, self.eval_module = FrozenBackboneClassifier(self.model), self.model
        else:
            self.train_module, self.eval_module = self.model, self.model
        self.train_net: nn.Module = self.train_module
        if self.process.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_net = nn.parallel.DistributedDataParallel(self.train_module, device_ids=ids)

    # -- resume --------------------------------------------------------------

    def _resume(self) -> None:
        saved = checkpoint.load_checkpoint(self.ckpt_path)
        changed = checkpoint.check_resumable(saved["options"], self.config.to_dict())
        if list(saved["classes"]) != self.classes:
            raise InputError("cannot resume: the classes in DATA differ from the saved run's")
        if changed:
            self.display.say(f"resume: options changed since the run started: {', '.join(changed)}")
        self.model.load_state_dict(saved["model"])
        self.engine.optimizer.load_state_dict(saved["optimizer"])
        self.engine.scheduler.load_state_dict(saved["scheduler"])
        if self.engine.scaler is not None and saved["scaler"]:
            self.engine.scaler.load_state_dict(saved["scaler"])
        self.state = RunState(
            epoch=saved["epoch"], history=list(saved["history"]), best_epoch=saved["best_epoch"],
            best_value=saved["best_value"], stopped_early=saved["stopped_early"], failed=dict(saved["failed"]),
        )  # fmt: skip
        checkpoint.restore_rng(saved["rng"])
        self.display.say(f"resumed {self.out} after epoch {self.state.epoch} of {self.config.epochs}")

    def _checkpoint(self) -> None:
        s = self.state
        checkpoint.save_checkpoint(
            self.ckpt_path,
            {
                "epoch": s.epoch, "model": self.model.state_dict(),
                "optimizer": self.engine.optimizer.state_dict(), "scheduler": self.engine.scheduler.state_dict(),
                "scaler": self.engine.scaler.state_dict() if self.engine.scaler is not None else {},
                "history": s.history, "best_epoch": s.best_epoch, "best_value": s.best_value,
                "stopped_early": s.stopped_early, "failed": s.failed, "classes": self.classes,
                "options": self.config.to_dict(),
            },
        )  # fmt: skip

    # -- epochs --------------------------------------------------------------

    def run(self) -> Path:
        c = self.config
        if c.resume:
            self._resume()
        elif self.process.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / "config.json", c.to_dict())
        while self.state.epoch < c.epochs and not self.state.stopped_early:
            self._epoch(self.state.epoch + 1)
        self._finish()
        distributed.barrier()
        return self.out

    def _train_batches(self, epoch: int) -> Iterable[dict[str, Any]]:
        self.generator.manual_seed(epoch_seed(self.config.seed, epoch, self.process.rank))
        if self.cached:
            return cached_batches(self.train_cache, self.config.batch_size, self.generator)
        if isinstance(self.train_loader.sampler, DistributedSampler):
            self.train_loader.sampler.set_epoch(epoch)
        return self.train_loader

    def _val_batches(self) -> Iterable[dict[str, Any]]:
        if self.cached:
            return cached_batches(
                self.val_cache, self.config.batch_size, None, with_extra=self.attrs is not None
            )
        return self.val_loader

    def _epoch(self, epoch: int) -> None:
        c, s = self.config, self.state
        self._set_policy(epoch)
        set_train_mode(self.train_module, c.frozen_bn_stats())
        lr = self.engine.optimizer.param_groups[-1]["lr"]  # the head's
        with (
            self._head_threads(),
            self.display.progress(
                f"epoch {epoch}/{c.epochs} train",
                len(self.train_cache.labels) if self.cached else self.steps_per_epoch * c.batch_size,
            ) as adv,
        ):
            if self.cached and c.head_solver == "lbfgs":
                result = fit_logistic(self.head, self.train_cache, class_weights=self.engine.class_weights)
            else:
                result = self.engine.train_epoch(self.train_net, self._train_batches(epoch), adv)
            if self.cached and self.attrs is not None:
                self.attrs.fit_cached(
                    self.model, self.train_cache
                )  # L-BFGS, whichever solver the label head has
                result.loss += cached_loss(
                    self.attrs, self.model, self.train_cache
                )  # as minibatch epochs add it
        if epoch == self.head_epochs + 1 and not self.cached:
            self._check_loaded(result.images, result.failed, self.splits.train)
        if not math.isfinite(result.loss) and self.engine.scaler is None:  # fp16's scaler skips such steps
            raise SkutagError(
                f"the training loss became {result.loss} in epoch {epoch}; lower --lr or use --clip-grad"
            )
        for failed in distributed.gather_to_main(result.failed) or []:
            self._record_failures(failed, self.splits.train)
        with self._head_threads():
            predictions = self._validate(f"epoch {epoch}/{c.epochs} val")
        stop = False
        if predictions is not None:  # rank 0
            figures = summary_metrics(predictions.labels, predictions.probs)
            seconds = result.seconds + self._val_seconds
            row = {"epoch": epoch, "train_loss": result.loss, **{k: figures[k] for k in HISTORY_COLUMNS[2:8]}}
            row |= {
                "lr": lr,
                "train_images": result.images,
                "seconds": seconds,
                "images_per_s": result.images / max(result.seconds, 1e-9),
            }
            value, heads = float(figures[c.best_metric]), None
            if self.attrs is not None:  # the heads finished on this epoch's validation, and the score
                heads, head_figures = epoch_heads(
                    self.attrs, self.model, predictions.heads, predictions.indices
                )
                value = selection_score(value, head_figures)
                row |= history_fields(head_figures, value)
            s.history.append(row)
            s.epoch = epoch
            margin = self.phases.margin(epoch, len(predictions.labels), SELECTABLE[c.best_metric])
            improved = self._is_better(value, margin)
            if not improved and margin > 0 and self._is_better(value):
                self.display.say(
                    f"epoch {epoch}: validation {self.selected} {value:.4f} beats epoch "
                    f"{s.best_epoch}'s {s.best_value:.4f} by no more than the margin {margin:.4f} "
                    "(--tune-margin): not counted as better"
                )
            if improved:
                s.best_epoch, s.best_value = epoch, value
                # mid-run the card carries the heads too, so this file exports as it is
                card = self.card.replace(
                    metrics={k: float(v) for k, v in figures.items()} | {"epoch": epoch}, attributes=heads
                )
                save_weights(self.out / BEST, self.model, card)
            patience_out = c.patience is not None and epoch - s.best_epoch >= c.patience
            tuning_out = self.phases.stop_tuning(epoch, s.best_epoch)
            s.stopped_early = patience_out or tuning_out
            write_csv(self.out / "history.csv", s.history, self.history_columns)
            self._checkpoint()
            self.display.epoch(row, improved)
            stop = s.stopped_early
            if patience_out:
                self.display.say(f"early stopping: no better {self.selected} for {c.patience} epochs")
            elif tuning_out:
                self.display.say(
                    f"fine-tuning stopped after epoch {epoch}: {self.phases.tune_patience} epoch(s) without a better "
                    f"validation {self.selected} than epoch {s.best_epoch}'s"
                    + (" (the head's)" if s.best_epoch <= self.head_epochs else "")
                    + "; the best weights are kept"
                )
        s.epoch = epoch
        s.stopped_early = distributed.broadcast_flag(stop, self.device)

    @contextlib.contextmanager
    def _head_threads(self) -> Iterator[None]:
        """One CPU thread for a head on cached features: its ops are tiny, and more threads only spin
        (20x slower on a busy 2-core machine)."""
        if not (self.cached and self.device.type == "cpu"):
            yield
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def _validate(self, description: str) -> Predictions | None:
        """Predictions on the validation set (sharded over the processes), gathered on rank 0; None elsewhere."""
        start = time.perf_counter()
        with self.display.progress(description, len(self.splits.val)) as advance:
            local = self.engine.predict(
                self.eval_module, self._val_batches(), advance, all_heads=self.attrs is not None
            )
        if self.cached:
            local.failed |= self.val_cache.failed
        (loaded,) = distributed.sum_across([float(len(local.labels))], self.device)
        self._check_loaded(int(loaded), local.failed, self.splits.val)
        parts = distributed.gather_to_main(local)
        self._val_seconds = time.perf_counter() - start
        if parts is None:
            return None
        predictions = merge_predictions(parts)
        self._record_failures(predictions.failed, self.splits.val)
        return predictions

    def _is_better(self, value: float, margin: float = 0.0) -> bool:
        """True when `value` beats the best so far by more than `margin` (trainer.recipe: fine-tuning's)."""
        best = self.state.best_value
        if best is None:
            return True
        if SELECTABLE[self.config.best_metric]:
            return value - best > margin + 1e-9 if margin else value > best
        return best - value > margin + 1e-9 if margin else value < best

    def _record_failures(self, failed: dict[int, str], samples: list) -> None:
        for index, error in failed.items():
            path = samples[index].path
            if path not in self.state.failed:
                self.state.failed[path] = error
                self.display.say(f"skipped {path}: {error}")

    def _check_loaded(self, loaded: int, failed: dict[int, str], samples: list) -> None:
        if loaded == 0:
            first = next(iter(failed.values()), "no error recorded")
            raise InputError(f"none of the {len(samples)} images could be loaded (first error: {first})")
