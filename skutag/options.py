"""Options shared by several commands, declared once here and applied as decorators.

A command that takes `--device` or `--workers` uses these, so names, defaults and
help never drift apart between `train`, `eval`, `export`, `run` and `bench`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

TORCH_DEVICES = ("auto", "cpu", "cuda")
ORT_DEVICES = ("auto", "cpu", "cuda", "tensorrt")


def device_option(choices: tuple[str, ...] = TORCH_DEVICES) -> Callable[[F], F]:
    return click.option(
        "--device",
        type=click.Choice(choices),
        default="auto",
        show_default=True,
        help="Where to compute. `auto` uses CUDA when it works and says when it falls back; "
        "naming a device fails loudly if it is not usable.",
    )


def workers_option(f: F) -> F:
    return click.option(
        "--workers",
        type=click.IntRange(min=0),
        default=None,
        help="DataLoader worker processes (default: chosen for this machine; 0 decodes in the main process).",
    )(f)


def batch_size_option(default: int) -> Callable[[F], F]:
    return click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=default,
        show_default=True,
        help="Images per batch.",
    )


def seed_option(f: F) -> F:
    return click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")(f)


def gradcam_option(f: F) -> F:
    return click.option(
        "--gradcam/--no-gradcam",
        default=None,
        help="Grad-CAM heatmaps of the worst mistakes in the report (misclassified-gradcam.png). "
        "Default: drawn when the insight extra is installed and the weights are PyTorch's; "
        "--gradcam makes it an error when it cannot be drawn.",
    )(f)


def out_option(help_text: str, *, file: bool = False) -> Callable[[F], F]:
    return click.option(
        "--out",
        "out",
        required=True,
        type=click.Path(dir_okay=not file, file_okay=file, writable=True),
        help=help_text,
    )


def input_path(
    name: str, *, file_okay: bool = True, dir_okay: bool = True, nargs: int = 1
) -> Callable[[F], F]:
    """A positional path that must exist: click reports a missing one in one line with exit code 2."""
    return click.argument(
        name, nargs=nargs, required=True, type=click.Path(exists=True, file_okay=file_okay, dir_okay=dir_okay)
    )
