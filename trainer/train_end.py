"""The end of `skutag train` (trainer.train's `Trainer` inherits it): the best weights reloaded and validated,
calibration (temperature, review section with the domain Gaussian of the stage statistics), the attribute heads finished, the refit, the report, metrics.json,
the card, Grad-CAM sheets and skipped.csv. Rank 0 writes every file.
"""

from __future__ import annotations

from typing import Any

import torch
from skutag.trainer import distributed
from skutag.trainer.attribute_epochs import MISTAKE_COLUMNS, epoch_heads, head_mistakes
from skutag.trainer.attribute_training import load_weights
from skutag.trainer.config import default_workers
from skutag.trainer.data import CatalogDataset
from skutag.trainer.features import CachedFeatures, extract_features, split_head
from skutag.trainer.head_fit import fit_logistic
from skutag.trainer.model import read_state_dict
from skutag.trainer.report import Evaluation, write_csv, write_report
from skutag.trainer.review import domain_fit, review_section
from skutag.trainer.weights import BEST, save_weights
from torch.utils.data import DataLoader

from skutag import calibration
from skutag.fsio import atomic_write_json
from skutag.heads import AttributeHead


class TrainerEnd:
    """The methods of `Trainer` that run once, after the last epoch (its attributes are set by Trainer)."""

    def _calibration(self) -> tuple[float, dict[str, Any]]:
        """The temperature (skutag.calibration, fitted on the validation logits of the best weights) and the
        card's review section (trainer.review: class means from the training features, thresholds from the
        validation ones, on calibrated probabilities).

        The features are the head phase's caches when the best weights come from a head-only epoch (their
        backbone is the one the caches were computed with), else one pass over the validation and the
        training images without augmentation. Under torchrun rank 0 computes both from its own shard of the validation split."""
        model = getattr(self.model, "module", self.model)
        body, head = split_head(getattr(model, "_orig_mod", model))
        cached = self.train_cache is not None and self.state.best_epoch <= self.head_epochs
        stages = self.domain_stages  # (): the cosine
        val = (
            self.val_cache
            if cached
            else extract_features(body, self.val_loader, self._prepare_images, stages)
        )
        train = self.train_cache
        if not cached:
            index = {name: i for i, name in enumerate(self.classes)}
            loader = DataLoader(
                CatalogDataset(self.splits.train, index, self.card),
                batch_size=self.config.batch_size,
                num_workers=default_workers() if self.config.workers is None else self.config.workers,
            )
            self.display.say(f"training features for the review statistics ({len(self.splits.train)} images)")
            train = extract_features(body, loader, self._prepare_images, stages)
        with torch.no_grad():
            logits = head(val.features.to(self.device)).float().cpu().double().numpy()
        self.val_features = val  # the attribute heads' calibration reads them too
        labels = val.labels.numpy()
        temperature = calibration.fit_temperature(logits, labels)
        probs = calibration.softmax(logits / temperature)
        # the domain score (issue 29): one Gaussian of the training rows' stage statistics, its tensors saved
        # in best.safetensors (DOMAIN_PREFIX) for the exporter's `domain_score` output
        self.domain_fit = None
        if stages and train.stats is not None and val.stats is not None and len(train.stats) > 1:
            self.domain_fit = domain_fit(train.stats.double().numpy())
        section = review_section(
            train.features.numpy(), train.labels.numpy(), val.features.numpy(), labels, probs,
            len(self.classes), rate=self.config.review_rate,
            domain=None if self.domain_fit is None else (self.domain_fit, val.stats.double().numpy(), stages),
        )  # fmt: skip
        return temperature, section

    def _refit(self) -> dict[str, Any] | None:
        """When the best weights are the L-BFGS head's (fine-tuning did not pay) and --refit is on: fit the
        head again on the training and validation features (both cached), so the saved model has seen every
        photo, as a logistic regression on all of DATA would. Called after `_calibration`: the temperature
        and review thresholds stay those fitted on validation with the head before the refit (cross-fitted),
        and the report and metrics are that head's validation figures. None when nothing was refitted."""
        c, s = self.config, self.state
        if not (c.refit and c.head_solver == "lbfgs" and self.train_cache is not None):
            return None
        if s.best_epoch > self.head_epochs:
            return None
        both = CachedFeatures(
            features=torch.cat([self.train_cache.features, self.val_cache.features]),
            labels=torch.cat([self.train_cache.labels, self.val_cache.labels]),
            indices=torch.arange(len(self.train_cache.labels) + len(self.val_cache.labels)),
            failed={},
        )
        with self._head_threads():
            fit_logistic(self.head, both, class_weights=self.engine.class_weights)
        train, val = len(self.train_cache.labels), len(self.val_cache.labels)
        self.display.say(
            f"refit: the head (fine-tuning did not pay) fitted again on {train} training + {val} validation "
            "feature rows; the temperature, review thresholds and validation figures are the head's before the refit"
        )
        return {
            "train_rows": train, "val_rows": val,
            "calibration": "fitted on validation with the head before the refit (cross-fitted)",
        }  # fmt: skip

    def _head_gradcam(self, head: AttributeHead) -> None:
        """REPORT/<name>-misclassified.csv (the head's validation mistakes) and its Grad-CAM sheet."""
        from skutag.trainer.explain import report_gradcam

        report = self.out / "report"
        rows = head_mistakes(
            head, self.model, self.val_features, self.attrs.val[head.name], [s.path for s in self.splits.val]
        )
        write_csv(report / f"{head.name}-misclassified.csv", rows, list(MISTAKE_COLUMNS))
        self.display.say(report_gradcam(self.out, report, self.config.gradcam, head=head.name))

    def _finish(self) -> None:
        """Report on the best weights: RUN/report/, metrics.json, card.json, skipped.csv (rank 0 writes).

        The report and metrics are of the calibrated probabilities (what the exported model gives), with
        the expected calibration error before and after temperature scaling."""
        self._set_policy(self.state.epoch)
        if self.process.is_main:
            load_weights(self.model, read_state_dict(self.out / BEST))
        distributed.broadcast_model(self.model)
        predictions = self._validate("final validation")
        if predictions is None:
            return
        temperature, review = self._calibration()
        # every head finished on the final validation's logits, gathered from every process (under torchrun
        # too: the validation features above are rank 0's shard)
        heads, attribute_figures = (
            (None, None)
            if self.attrs is None
            else epoch_heads(self.attrs, self.model, predictions.heads, predictions.indices)
        )
        refit = self._refit()
        val = self.splits.val
        evaluation = Evaluation(
            classes=self.classes,
            paths=[val[i].path for i in predictions.indices],
            labels=predictions.labels,
            probs=calibration.retemper(predictions.probs, 1.0 / temperature),
            failed={val[i].path: e for i, e in predictions.failed.items()},
            temperature=temperature,
        )
        write_report(self.out / "report", evaluation)
        summary = evaluation.summary()
        s = self.state
        atomic_write_json(
            self.out / "metrics.json",
            summary
            | {"best_epoch": s.best_epoch, "best_metric": self.config.best_metric, "epochs_run": s.epoch}
            | ({} if self.attrs is None else {"best_by": self.selected, "best_score": s.best_value})
            | {"review": {k: review[k] for k in ("target_rate", "ood_threshold", "confidence_threshold")}}
            | {"review_validation": review["validation"]}
            | ({} if attribute_figures is None else {"attributes": attribute_figures})
            | {"refit": refit},
        )
        card = self.card.replace(
            provenance=self.card.provenance | {"refit": refit},
            metrics={k: float(v) for k, v in summary.items() if isinstance(v, (int, float))}
            | {"epoch": s.best_epoch},
            review=review,
            temperature=temperature,
            attributes=heads,
        )
        card.save(self.out / "card.json")
        # the exporter reads the card (and the domain Gaussian) from the weights
        save_weights(self.out / BEST, self.model, card, domain=self.domain_fit)
        from skutag.trainer.explain import report_gradcam  # lazy: grad-cam is an optional extra

        self.display.say(report_gradcam(self.out, self.out / "report", self.config.gradcam))
        if self.config.gradcam_head is not None and heads is not None:
            self._head_gradcam(next(h for h in heads if h.name == self.config.gradcam_head))
        write_csv(
            self.out / "skipped.csv",
            [{"path": p, "error": e} for p, e in sorted(s.failed.items())],
            ["path", "error"],
        )
        queue = review["validation"]
        self.display.say(
            f"calibration: temperature {temperature:.3f}, ECE {summary['ece_uncalibrated']:.3f} -> {summary['ece']:.3f}"
            f"; review queue on validation: {queue['flagged']} of {queue['rows']} flagged "
            f"(target {review['target_rate']:.0%}), {queue['wrong_caught']} of {queue['wrong']} wrong caught"
        )
        self.display.say(
            f"done: best epoch {s.best_epoch}, accuracy {summary['accuracy']:.3f}, macro F1 {summary['macro_f1']:.3f}"
            f" -> {self.out}"
        )
