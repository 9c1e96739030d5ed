"""The evaluation report directory: CSV/JSON tables and matplotlib figures, all written atomically.

`write_report(REPORT, evaluation)` writes per_class.csv, confusion_matrix.csv/.png
(PNG normalised per row), roc.png/roc.json (one-vs-rest, per-class and macro AUC),
reliability.json/.png (skutag.calibration: 15 bins and the ECE, before and after temperature scaling),
misclassified.csv (path, true, predicted, score, top-3), misclassified.png (a contact
sheet of the most confident mistakes) and skipped.csv (files that failed to load). Paths
are the samples' uris (valid UTF-8; `skutag.listing.local_path` opens them); a file that
no longer decodes for the contact sheet is drawn as "unreadable", never an error.
Training and `skutag eval` both call it, so their reports are the same.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from skutag.trainer import metrics

from skutag import calibration
from skutag.fsio import atomic_path, atomic_write_json, atomic_write_text

CONTACT_SHEET_SIZE = 24


@dataclass
class Evaluation:
    """Predictions on labelled images: `probs[i]` is the prediction for `paths[i]` with true class `labels[i]`."""

    classes: list[str]
    paths: list[str]
    labels: np.ndarray  # int [N]
    probs: np.ndarray  # float [N, K]
    failed: dict[str, str] = field(default_factory=dict)  # path -> error
    # The temperature `probs` are calibrated with (skutag.calibration); None: uncalibrated probabilities
    temperature: float | None = None

    def uncalibrated(self) -> np.ndarray | None:
        """The probabilities before temperature scaling (None when there was none)."""
        return None if self.temperature is None else calibration.retemper(self.probs, self.temperature)

    def summary(self) -> dict[str, Any]:
        figures = metrics.summary_metrics(self.labels, self.probs)
        figures["ece"] = calibration.ece(self.probs, self.labels)
        before = self.uncalibrated()
        if before is not None:
            figures["ece_uncalibrated"] = calibration.ece(before, self.labels)
            figures["temperature"] = float(self.temperature)
        figures["macro_auc"] = metrics.roc(self.labels, self.probs, self.classes)["macro_auc"]
        figures["misclassified"] = int((self.probs.argmax(axis=1) != self.labels).sum())
        figures["skipped"] = len(self.failed)
        return figures


def write_report(out: str | Path, evaluation: Evaluation) -> None:
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ev, classes = evaluation, evaluation.classes
    write_csv(out / "per_class.csv", metrics.per_class_table(ev.labels, ev.probs, classes))
    counts = metrics.confusion(ev.labels, ev.probs, len(classes))
    write_csv(
        out / "confusion_matrix.csv",
        [
            {"true\\predicted": name, **dict(zip(classes, map(int, row), strict=True))}
            for name, row in zip(classes, counts, strict=True)
        ],
    )
    _confusion_png(out / "confusion_matrix.png", counts, classes)
    curves = metrics.roc(ev.labels, ev.probs, classes)
    atomic_write_json(out / "roc.json", curves)
    _roc_png(out / "roc.png", curves)
    wrong = misclassified_rows(ev)
    write_csv(out / "misclassified.csv", wrong, ["path", "true_label", "predicted_label", "score", "top3"])
    _contact_sheet(out / "misclassified.png", wrong[:CONTACT_SHEET_SIZE])
    diagrams = {"calibrated" if ev.temperature is not None else "as given": ev.probs}
    if ev.temperature is not None:
        diagrams = {"before temperature scaling": ev.uncalibrated(), **diagrams}
    tables = {
        name: {"ece": calibration.ece(p, ev.labels), "bins": calibration.reliability(p, ev.labels)}
        for name, p in diagrams.items()
    }
    atomic_write_json(out / "reliability.json", {"temperature": ev.temperature, "diagrams": tables})
    _reliability_png(out / "reliability.png", tables)
    write_csv(
        out / "skipped.csv",
        [{"path": p, "error": e} for p, e in sorted(ev.failed.items())],
        ["path", "error"],
    )


def misclassified_rows(ev: Evaluation) -> list[dict[str, Any]]:
    """Wrong predictions, most confident first."""
    predicted = ev.probs.argmax(axis=1)
    rows = []
    for i in np.flatnonzero(predicted != ev.labels):
        top = np.argsort(-ev.probs[i], kind="stable")[:3]
        rows.append(
            {
                "path": ev.paths[i],
                "true_label": ev.classes[ev.labels[i]],
                "predicted_label": ev.classes[predicted[i]],
                "score": round(float(ev.probs[i, predicted[i]]), 6),
                "top3": ";".join(f"{ev.classes[j]}:{ev.probs[i, j]:.4f}" for j in top),
            }
        )
    return sorted(rows, key=lambda r: -r["score"])


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns or list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _confusion_png(path: Path, counts: np.ndarray, classes: list[str]) -> None:
    import matplotlib.pyplot as plt

    k = len(classes)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    side = min(4 + 0.45 * k, 30)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(k), classes, rotation=90, fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 25:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    colour = "white" if share[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_title("Confusion matrix (normalised per row)")
    _save(fig, path)


def _roc_png(path: Path, curves: dict[str, Any]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    many = len(curves["curves"]) > 12
    for name, curve in curves["curves"].items():
        label = None if many else f"{name} (AUC {curves['per_class_auc'][name]:.3f})"
        ax.plot(curve["fpr"], curve["tpr"], linewidth=1, label=label)
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"One-vs-rest ROC (macro AUC {curves['macro_auc']:.3f})")
    if not many and curves["curves"]:
        ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def _reliability_png(path: Path, tables: dict[str, Any]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    for name, table in tables.items():
        used = [b for b in table["bins"] if b["rows"]]
        ax.plot(
            [b["confidence"] for b in used],
            [b["accuracy"] for b in used],
            "o-",
            label=f"{name} (ECE {table['ece']:.3f})",
        )
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability ({calibration.BINS} bins)")
    ax.legend(fontsize=8, loc="upper left")
    _save(fig, path)


def contact_grid(count: int, columns: int = 6):
    """An empty figure of `count` image cells, six to a row (the contact sheet of mistakes)."""
    import matplotlib.pyplot as plt

    grid_rows = max(1, math.ceil(count / columns))
    fig, axes = plt.subplots(grid_rows, columns, figsize=(columns * 2.2, grid_rows * 2.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not count:
        axes[0, 0].text(0, 0.5, "no misclassified images", fontsize=11)
    return fig, axes


def _contact_sheet(path: Path, rows: list[dict[str, Any]]) -> None:
    from skutag.images import ImageError, load_image, read_file
    from skutag.listing import local_path

    fig, axes = contact_grid(len(rows))
    for ax, row in zip(axes.flat, rows, strict=False):
        try:
            ax.imshow(load_image(read_file(local_path(row["path"])), resize_size=160, image_size=160).pixels)
        except ImageError:
            ax.text(0.5, 0.5, "unreadable", ha="center")
        ax.set_title(
            f"true {row['true_label']}\npred {row['predicted_label']} {row['score']:.2f}",
            fontsize=7,
            color="darkred",
        )
    fig.suptitle("Most confident mistakes")
    _save(fig, path)
