"""The parity check: the exported file in its own runtime (CPU) against the PyTorch model.

Both see the same uint8 images (or the same float tensors for `--input float`). The
figures are per image, so they mean the same at 2 classes and at 1,000: the total
variation distance between the two probability vectors of each image (TV, half the
sum of |dprob| over its classes, in [0, 1]) with its max, p99 and mean over the
images; top-1 agreement; mean top-k overlap; and, when the model has an `embedding`
output, each image's relative L2 error of the embedding. A precision's `Limits`
(skutag.artifacts.TARGETS) decide pass or fail (`Parity.failures`, the gate).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from skutag.exporter import formats
from skutag.exporter.graph import reads_domain
from skutag.exporter.head_parity import head_failures, heads_parity, split_outputs
from skutag.exporter.samples import SampleSet, batches, model_input
from torch import nn

from skutag.artifacts import Limits, for_path
from skutag.card import ModelCard
from skutag.errors import SkutagError

CHECK_BATCH = 16


class ParityError(SkutagError):
    """The exported model does not match PyTorch within its target's limits (exit 1)."""


@dataclass(frozen=True)
class Outputs:
    """A model's outputs on the check images: probabilities, and the embedding when it has one."""

    probs: np.ndarray  # [N, classes]
    embedding: np.ndarray | None = None  # [N, D]
    attributes: dict[str, np.ndarray] | None = None  # head name -> [N, values] (exporter.head_parity)


@dataclass(frozen=True)
class Parity:
    images: int
    max_tv: float  # per-image total variation distance: its max over the images
    p99_tv: float
    mean_tv: float
    top1_agreement: float
    top5_overlap: float
    k: int  # the "top-5" k: min(5, classes)
    max_embedding_error: float | None = None  # per-image ||e - e_ref|| / ||e_ref||: its max
    p99_embedding_error: float | None = None
    attributes: dict[str, dict[str, float]] | None = None  # per attribute head (exporter.head_parity)

    def failures(self, limits: Limits) -> list[str]:
        """What falls outside `limits`, one phrase each (empty: the gate passes)."""
        problems = []
        if not self.max_tv < limits.max_tv:
            problems.append(f"max per-image TV {self.max_tv:.3g} >= {limits.max_tv:g}")
        if not self.p99_tv < limits.p99_tv:
            problems.append(f"p99 per-image TV {self.p99_tv:.3g} >= {limits.p99_tv:g}")
        if self.top1_agreement < limits.min_top1_agreement:
            problems.append(f"top-1 agreement {self.top1_agreement:.3f} < {limits.min_top1_agreement:g}")
        if self.top5_overlap < limits.min_top5_overlap:
            problems.append(f"top-{self.k} overlap {self.top5_overlap:.3f} < {limits.min_top5_overlap:g}")
        if self.max_embedding_error is not None and not self.max_embedding_error < limits.max_embedding_error:
            problems.append(
                f"max embedding error {self.max_embedding_error:.3g} >= {limits.max_embedding_error:g}"
            )
        return problems + head_failures(self.attributes or {}, limits)

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def total_variation(reference: np.ndarray, exported: np.ndarray) -> np.ndarray:
    """Per-image total variation distance of two `[N, classes]` probability arrays, in [0, 1]."""
    delta = np.abs(reference.astype(np.float64) - exported.astype(np.float64))
    return 0.5 * delta.sum(axis=1)


def relative_error(reference: np.ndarray, exported: np.ndarray) -> np.ndarray:
    """Per-row ||exported - reference|| / ||reference|| (L2) of two `[N, D]` arrays."""
    reference, exported = reference.astype(np.float64), exported.astype(np.float64)
    norms = np.maximum(np.linalg.norm(reference, axis=1), 1e-12)
    return np.linalg.norm(exported - reference, axis=1) / norms


def compare(
    reference: np.ndarray,
    exported: np.ndarray,
    reference_embedding: np.ndarray | None = None,
    exported_embedding: np.ndarray | None = None,
) -> Parity:
    """Parity figures of two `[N, classes]` probability arrays (and of two `[N, D]` embeddings)."""
    if reference.shape != exported.shape:
        raise SkutagError(f"parity check: output shapes differ ({reference.shape} vs {exported.shape})")
    k = min(5, reference.shape[1])
    top_ref = np.argsort(-reference, axis=1, kind="stable")[:, :k]
    top_exp = np.argsort(-exported, axis=1, kind="stable")[:, :k]
    overlap = [len(set(a) & set(b)) / k for a, b in zip(top_ref, top_exp, strict=True)]
    tv = total_variation(reference, exported)
    embedding: dict[str, float] = {}
    if reference_embedding is not None and exported_embedding is not None:
        errors = relative_error(reference_embedding, exported_embedding)
        embedding = {
            "max_embedding_error": float(errors.max()),
            "p99_embedding_error": float(np.percentile(errors, 99)),
        }
    return Parity(
        images=len(reference),
        max_tv=float(tv.max()),
        p99_tv=float(np.percentile(tv, 99)),
        mean_tv=float(tv.mean()),
        top1_agreement=float(np.mean(top_ref[:, 0] == top_exp[:, 0])),
        top5_overlap=float(np.mean(overlap)),
        k=k,
        **embedding,
    )


def torch_outputs(module: nn.Module, samples: SampleSet, card: ModelCard, input_kind: str) -> Outputs:
    """Outputs of the PyTorch `ExportModule` (fp32, CPU) on the samples."""
    probs, embedding = [], []
    if card.attributes is not None:
        with torch.inference_mode():
            chunks = [
                module(torch.from_numpy(model_input(b, card, input_kind)))
                for b in batches(samples.pixels, CHECK_BATCH)
            ]
        values = [np.concatenate([c[i].numpy() for c in chunks]) for i in range(len(chunks[0]))]
        return Outputs(*split_outputs(values, card.attributes, module.embeddings, reads_domain(card)))
    with torch.inference_mode():
        for batch in batches(samples.pixels, CHECK_BATCH):
            result = module(torch.from_numpy(model_input(batch, card, input_kind)))
            if isinstance(result, tuple):
                probs.append(result[0].numpy())
                embedding.append(result[1].numpy())
            else:
                probs.append(result.numpy())
    return Outputs(np.concatenate(probs), np.concatenate(embedding) if embedding else None)


def exported_outputs(path: str | Path, samples: SampleSet, card: ModelCard, input_kind: str) -> Outputs:
    """Outputs of the exported file in its format's runtime on the CPU (by its suffix)."""
    runner = formats.backend(for_path(path)).load(Path(path))
    if card.attributes is not None:
        values = formats.run_outputs(runner, model_input(samples.pixels, card, input_kind), CHECK_BATCH)
        domain = reads_domain(card)
        embeddings = len(values) > 1 + domain + len(card.attributes)
        return Outputs(*split_outputs(values, card.attributes, embeddings, domain))
    probs, embedding = formats.run_all(runner, model_input(samples.pixels, card, input_kind), CHECK_BATCH)
    return Outputs(probs, embedding)


def check(
    path: str | Path,
    reference: Outputs,
    samples: SampleSet,
    card: ModelCard,
    input_kind: str,
    limits: Limits,
    label: str,
) -> Parity:
    """Run the exported file and compare with `reference`; raise `ParityError` outside `limits`."""
    exported = exported_outputs(path, samples, card, input_kind)
    parity = compare(reference.probs, exported.probs, reference.embedding, exported.embedding)
    if card.attributes is not None:
        figures = heads_parity(card.attributes, reference.attributes or {}, exported.attributes or {})
        parity = replace(parity, attributes=figures)
    problems = parity.failures(limits)
    if problems:
        raise ParityError(
            f"{label} export failed its parity check against PyTorch on {parity.images} check images: "
            + "; ".join(problems)
            + " (nothing written; --no-check skips the check)"
        )
    return parity
