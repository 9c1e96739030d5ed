"""The `skutag` command: a click group whose subcommands load lazily.

`skutag --help` imports no stage, and `skutag run --help` imports batchrun's CLI
module only (which imports neither torch nor the trainer). Errors a user can cause
print one line and exit with the code docs/design.md gives; `--verbose` adds tracebacks.
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback

import click

from skutag import __version__
from skutag.errors import SkutagError

# name -> "module:attribute" of the click command; imported only when used.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("skutag.synth_cli:synth", "make a synthetic product catalog (no downloads)"),
    "train": (
        "skutag.trainer.cli:train",
        "fine-tune an ImageNet-pretrained backbone (timm or torchvision) on labelled photos",
    ),
    "eval": ("skutag.trainer.cli:evaluate", "evaluate a run dir, .safetensors or .onnx on labelled images"),
    "export": (
        "skutag.exporter.cli:export",
        "export a trained run to one self-describing file: ONNX or an edge format, fp16 or int8",
    ),
    "plan": ("skutag.batchrun.cli:plan", "list a catalog once into OUT/_plan/ for shards and reruns"),
    "run": (
        "skutag.batchrun.cli:run",
        "tag a catalog with an exported model into Parquet (local or Ray), resumable",
    ),
    "publish": (
        "skutag.batchrun.publish.cli:publish",
        "merge a finished OUT into a Delta Lake table keyed by id (new, changed, removed)",
    ),
    "predict": (
        "skutag.predict.cli:predict",
        "top-k labels of a few photos from any model skutag makes (run dir, ONNX or an edge file)",
    ),
    "bench": (
        "skutag.bench.cli:bench",
        "latency, throughput and accuracy of exported models (every format), side by side",
    ),
    "index": ("skutag.insight.cli:index", "a nearest-neighbour index over the embeddings of batch runs"),
    "similar": ("skutag.insight.cli:similar", "similar listings of ids or images, or near-duplicate groups"),
    "explain": ("skutag.insight.cli:explain", "Grad-CAM heatmaps: where a trained model looked"),
    "report": (
        "skutag.pages.cli:report",
        "a static page of a run: what changed tonight, the review queue, errors",
    ),
    "review": (
        "skutag.pages.cli:review",
        "a local page to review flagged rows; decisions feed the next training",
    ),
    "demo": ("skutag.demo:demo", "the whole pipeline end to end on the real photos in demo/photos"),
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        target = COMMANDS[cmd_name][0]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                return _not_built(cmd_name)
            raise
        return getattr(module, attr)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in COMMANDS:
            import difflib

            close = difflib.get_close_matches(name, list(COMMANDS), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise click.UsageError(f"No such command '{name}'.{hint}", ctx)
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text from the table, so `skutag --help` imports nothing.
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_text) for name, (_, help_text) in COMMANDS.items()])


def _not_built(name: str) -> click.Command:
    @click.command(name=name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def placeholder() -> None:
        raise SkutagError(f"`skutag {name}` is not built yet in this version")

    return placeholder


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="skutag")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Tag product catalogs with image classifiers.

    \b
    skutag synth OUT                    make a synthetic catalog
    skutag train DATA --out RUN         fine-tune a pretrained backbone
    skutag export RUN --out MODEL.onnx  one self-describing file (.onnx, .pte, .tflite, .xml, .mlpackage)
    skutag run MODEL SRC --out OUT      tags to Parquet, one row per input
    skutag predict MODEL IMAGE...       top-k labels of a few photos, as a table or --json
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the group, turning exceptions into one line and an exit code."""
    args = _verbose_first(sys.argv[1:] if argv is None else argv)
    verbose = any(a in ("-v", "--verbose") for a in args[: _first_command_index(args)])
    try:
        cli.main(args=args, prog_name="skutag", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        # One line, not click's Usage/Try/Error block: a missing path or a bad option is a user error.
        command = (
            f" {exc.ctx.command_path.split(' ', 1)[1]}" if exc.ctx and " " in exc.ctx.command_path else ""
        )
        click.secho(f"Error: {exc.format_message()} (see skutag{command} --help)", fg="red", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SkutagError as exc:
        _report(exc, verbose)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: still one line unless --verbose
        _report(exc, verbose, hint=True)
        sys.exit(1)


def _verbose_first(args: list[str]) -> list[str]:
    """`skutag CMD ... --verbose` as `skutag --verbose CMD ...`: the error hint says "run with --verbose",
    and users append it (no command has a -v/--verbose of its own; nothing after `--` is moved)."""
    end = args.index("--") if "--" in args else len(args)
    start = _first_command_index(args[:end]) + 1
    flags = [a for a in args[start:end] if a in ("-v", "--verbose")]
    if not flags:
        return list(args)
    rest = [a for a in args[start:end] if a not in ("-v", "--verbose")]
    return ["--verbose", *args[:start], *rest, *args[end:]]


def _first_command_index(args: list[str]) -> int:
    for i, arg in enumerate(args):
        if arg in COMMANDS:
            return i
    return len(args)


def _report(exc: BaseException, verbose: bool, hint: bool = False) -> None:
    if verbose:
        traceback.print_exception(exc)
    message = str(exc) or type(exc).__name__
    if hint:
        message = f"{type(exc).__name__}: {message} (run with --verbose for the traceback)"
    click.secho(f"Error: {message}", fg="red", err=True)
