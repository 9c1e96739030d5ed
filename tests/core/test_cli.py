"""The CLI: lazy loading, version, one-line errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from skutag import __version__
from skutag.cli import COMMANDS
from tests.support.cli import skutag


def modules_after(*args: str) -> set[str]:
    code = (
        "import sys, json\nfrom skutag.cli import main\n"
        f"try:\n    main({list(args)!r})\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return set(json.loads(result.stderr.strip().splitlines()[-1]))


def test_version():
    result = skutag("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_help_lists_every_command_and_imports_no_stage():
    result = skutag("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout
    loaded = modules_after("--help")
    assert not {"torch", "trainer", "exporter", "batchrun", "onnxruntime", "numpy"} & loaded


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_subcommand_help_does_not_import_torch(command):
    loaded = modules_after(command, "--help")
    assert "torch" not in loaded, f"`skutag {command} --help` imported torch"
    assert not any(name == "skutag.trainer.loop" or name.startswith("torch.optim") for name in loaded)


def test_run_help_never_imports_the_trainer():
    assert not any(name.split(".")[0] == "trainer" for name in modules_after("run", "--help"))


def test_unknown_command_is_a_usage_error():
    result = skutag("trian")
    assert result.returncode == 2
    assert "No such command 'trian'. Did you mean 'train'?" in result.stderr


def test_missing_input_path_is_one_line_and_exit_2(tmp_path):
    result = skutag("run", str(tmp_path / "missing.onnx"), str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0] and "skutag run --help" in lines[0]


def test_a_command_not_built_says_so_and_exits_1(monkeypatch, capsys):
    from skutag import cli

    monkeypatch.setitem(cli.COMMANDS, "future", ("skutag_no_such_module:command", "not yet"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["future", "--anything"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == "Error: `skutag future` is not built yet in this version"


def test_unexpected_errors_are_one_line_unless_verbose(monkeypatch, capsys):
    import click

    from skutag import cli

    @click.command()
    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(sys.modules[__name__], "broken", broken, raising=False)
    monkeypatch.setitem(cli.COMMANDS, "broken", (f"{__name__}:broken", "raises"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["broken"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and len(err.strip().splitlines()) == 1 and "boom" in err
    with pytest.raises(SystemExit):
        cli.main(["--verbose", "broken"])
    assert "Traceback" in capsys.readouterr().err


def test_user_errors_are_one_line_and_verbose_shows_the_traceback(tmp_path):
    result = skutag("synth", str(tmp_path / "c"), "--size", "big")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "MIN-MAX" in result.stderr


def test_verbose_after_the_command_works_like_before_it(monkeypatch, capsys):
    import click

    from skutag import cli

    @click.command()
    @click.argument("thing")
    def broken(thing: str) -> None:
        raise RuntimeError(f"boom {thing}")

    monkeypatch.setattr(sys.modules[__name__], "broken", broken, raising=False)
    monkeypatch.setitem(cli.COMMANDS, "broken", (f"{__name__}:broken", "raises"))
    for args in (["broken", "x", "--verbose"], ["broken", "--verbose", "x"], ["broken", "x", "-v"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 1 and "Traceback" in err and "boom x" in err
    with pytest.raises(SystemExit):
        cli.main(["broken", "--", "--verbose"])  # after `--` it is an argument
    assert "boom --verbose" in capsys.readouterr().err
