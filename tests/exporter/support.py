"""Helpers of the exporter's tests: the CLI in this process, and the card inside an ONNX session."""

from __future__ import annotations

from skutag.card import METADATA_KEY, ModelCard
from skutag.cli import main


def invoke(capsys, *args: str) -> tuple[int, str, str]:
    """Run `skutag ARGS` in this process; (exit code, stdout, stderr)."""
    try:
        main([*args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def session_card(session) -> ModelCard:
    """The skutag card in a session's model metadata."""
    return ModelCard.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
