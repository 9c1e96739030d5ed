"""The parity check: the exported file in ONNX Runtime (CPU) against the PyTorch model.

Both see the same uint8 images (or the same float tensors for `--input float`).
The figures are max |dprob|, top-1 agreement and mean top-5 overlap; a target's
`Limits` (exporter.targets) decide pass or fail.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exporter.graph import INPUT_NAME, PROBS
from exporter.samples import SampleSet, batches, model_input
from exporter.targets import Limits
from skutag.card import ModelCard
from skutag.errors import SkutagError

CHECK_BATCH = 16


class ParityError(SkutagError):
    """The exported model does not match PyTorch within its target's limits (exit 1)."""


@dataclass(frozen=True)
class Parity:
    images: int
    max_abs_dprob: float
    mean_abs_dprob: float
    top1_agreement: float
    top5_overlap: float
    k: int  # the "top-5" k: min(5, classes)

    def failures(self, limits: Limits) -> list[str]:
        problems = []
        if not self.max_abs_dprob < limits.max_abs_dprob:
            problems.append(f"max |dprob| {self.max_abs_dprob:.3g} >= {limits.max_abs_dprob:g}")
        if not self.mean_abs_dprob < limits.max_mean_abs_dprob:
            problems.append(f"mean |dprob| {self.mean_abs_dprob:.3g} >= {limits.max_mean_abs_dprob:g}")
        if self.top1_agreement < limits.min_top1_agreement:
            problems.append(f"top-1 agreement {self.top1_agreement:.3f} < {limits.min_top1_agreement:g}")
        if self.top5_overlap < limits.min_top5_overlap:
            problems.append(f"top-{self.k} overlap {self.top5_overlap:.3f} < {limits.min_top5_overlap:g}")
        return problems

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def compare(reference: np.ndarray, exported: np.ndarray) -> Parity:
    """Parity figures of two `[N, classes]` probability arrays."""
    if reference.shape != exported.shape:
        raise SkutagError(f"parity check: output shapes differ ({reference.shape} vs {exported.shape})")
    k = min(5, reference.shape[1])
    top_ref = np.argsort(-reference, axis=1, kind="stable")[:, :k]
    top_exp = np.argsort(-exported, axis=1, kind="stable")[:, :k]
    overlap = [len(set(a) & set(b)) / k for a, b in zip(top_ref, top_exp, strict=True)]
    delta = np.abs(reference.astype(np.float64) - exported.astype(np.float64))
    return Parity(
        images=len(reference),
        max_abs_dprob=float(delta.max()),
        mean_abs_dprob=float(delta.mean()),
        top1_agreement=float(np.mean(top_ref[:, 0] == top_exp[:, 0])),
        top5_overlap=float(np.mean(overlap)),
        k=k,
    )


def torch_probs(module: nn.Module, samples: SampleSet, card: ModelCard, input_kind: str) -> np.ndarray:
    """Probabilities of the PyTorch `ExportModule` (fp32, CPU) on the samples."""
    outputs = []
    with torch.inference_mode():
        for batch in batches(samples.pixels, CHECK_BATCH):
            result = module(torch.from_numpy(model_input(batch, card, input_kind)))
            outputs.append((result[0] if isinstance(result, tuple) else result).numpy())
    return np.concatenate(outputs)


def ort_probs(path: str | Path, samples: SampleSet, card: ModelCard, input_kind: str) -> np.ndarray:
    """Probabilities of the exported file in ONNX Runtime on the CPU."""
    from skutag.runtime import create_session

    session, _ = create_session(path, "cpu")
    outputs = [
        session.run([PROBS], {INPUT_NAME: model_input(batch, card, input_kind)})[0]
        for batch in batches(samples.pixels, CHECK_BATCH)
    ]
    return np.concatenate(outputs)


def check(
    path: str | Path,
    reference: np.ndarray,
    samples: SampleSet,
    card: ModelCard,
    input_kind: str,
    limits: Limits,
    label: str,
) -> Parity:
    """Run the exported file and compare with `reference`; raise `ParityError` outside `limits`."""
    parity = compare(reference, ort_probs(path, samples, card, input_kind))
    problems = parity.failures(limits)
    if problems:
        raise ParityError(
            f"{label} export failed its parity check against PyTorch on {parity.images} images: "
            + "; ".join(problems)
            + " (nothing written; --no-check skips the check)"
        )
    return parity
