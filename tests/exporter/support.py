"""Helpers of the exporter's tests: the CLI in this process, and the card inside an ONNX session."""

from __future__ import annotations

from skutag.card import METADATA_KEY, ModelCard
from tests.support.cli import invoke  # noqa: F401  (the exporter tests import it from here)


def session_card(session) -> ModelCard:
    """The skutag card in a session's model metadata."""
    return ModelCard.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
