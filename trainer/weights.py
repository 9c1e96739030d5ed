"""`best.safetensors`: trained weights with the model card in their metadata, and loading them back.

These are the only functions the exporter and `skutag eval` use to get a trained model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from skutag.card import METADATA_KEY, ModelCard
from skutag.errors import InputError
from skutag.fsio import atomic_path

BEST = "best.safetensors"


def save_weights(path: str | Path, model: nn.Module, card: ModelCard, domain: dict | None = None) -> None:
    """Atomically write the model's state dict with `card` in the safetensors metadata (and `domain`, the
    review queue's Gaussian of stage statistics, as tensors `review.domain.*`: trainer.stage_stats)."""
    from safetensors.torch import save_file
    from skutag.trainer.stage_stats import domain_tensors

    plain = _unwrap(model)
    # A model with attribute heads (trainer.multihead) saves the plain classifier's keys plus its heads'.
    weights = plain.plain_state() if hasattr(plain, "plain_state") else plain.state_dict()
    state = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    if domain is not None:
        state |= domain_tensors(domain)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: card.to_json()})


def resolve_weights(source: str | Path) -> Path:
    """A run dir (its best.safetensors) or a .safetensors file."""
    source = Path(source)
    if source.is_dir():
        source = source / BEST
        if not source.is_file():
            raise InputError(f"{source.parent} is not a skutag run dir: no {BEST} in it")
    elif not source.is_file():
        raise InputError(f"not found: {source}")
    if source.suffix != ".safetensors":
        raise InputError(f"expected a run dir or a .safetensors file, got {source}")
    return source


def read_card(path: str | Path) -> ModelCard:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:
        raise InputError(f"cannot read {path}: not a valid safetensors file ({exc})") from exc
    if METADATA_KEY not in metadata:
        raise InputError(f"{path} has no skutag model card in its metadata")
    return ModelCard.from_json(metadata[METADATA_KEY])


def load_trained(source: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Rebuild the trained model (eval mode) and its card from a run dir or a .safetensors file."""
    from safetensors.torch import load_file
    from skutag.trainer.model import build_model

    path = resolve_weights(source)
    card = read_card(path)
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise InputError(f"cannot read weights {path}: {exc}") from exc
    model = build_model(card.arch, card.num_classes, "none")
    state, domain = _domain_of(state, card, path)
    if card.attributes is not None:
        from skutag.trainer.multihead import from_state

        model = from_state(model, card, state, str(path))
    else:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise InputError(
                f"the card in {path} does not match its weights ({card.arch}, "
                f"{card.num_classes} classes): {str(exc).splitlines()[0]}"
            ) from exc
    model.domain_fit = domain  # the exporter's `domain_score` output reads it (exporter.graph)
    return model.to(device).eval(), card


def _domain_of(state: dict, card: ModelCard, path: Path) -> tuple[dict, dict | None]:
    """The model's own tensors and the review's domain Gaussian, which a card of score stage-statistics needs."""
    from skutag.trainer.stage_stats import split_domain

    from skutag.card import DOMAIN_SCORE

    try:
        state, domain = split_domain(state)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from exc
    if domain is None and (card.review or {}).get("score") == DOMAIN_SCORE:
        raise InputError(f"{path}: its card's review reads the domain score but the weights hold no Gaussian")
    return state, domain


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model behind DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
