"""The ``slstm`` entry point: every listed subcommand resolves to a module."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import slstm
from slstm import cli

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.mark.parametrize("name, module_name, help_text", cli.COMMANDS)
def test_command_module_has_entry_points(name, module_name, help_text):
    module = importlib.import_module(module_name)
    assert callable(module.add_arguments), name
    assert callable(module.run), name


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    output = capsys.readouterr().out
    for name, _, _ in cli.COMMANDS:
        assert name in output


def test_no_command_prints_usage(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_command_exits_with_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_help_does_not_import_torch():
    code = (
        "import sys; from slstm import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().endswith("False")


def test_unknown_option_reports_subcommand_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["info", "--no-such-option", "3"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "usage: slstm info" in error
    assert "--no-such-option" in error


def test_command_line_names_the_console_command():
    from slstm.utils import command_line

    main_py = str(Path(slstm.__file__).with_name("__main__.py"))
    assert command_line([main_py, "calibrate", "a b.pt"]) == "slstm calibrate 'a b.pt'"
    # Other programs keep their path.
    assert command_line(["scripts/x.py", "--lr", "0.1"]) == "scripts/x.py --lr 0.1"


def test_closed_stdout_ends_without_traceback():
    # The reader closes the pipe after one line, as `slstm info | head -1` does.
    process = subprocess.Popen(
        [sys.executable, "-m", "slstm", "info", "--data", "digits", "--load"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read().decode()
    process.wait(timeout=120)
    assert "Traceback" not in stderr
    assert "BrokenPipeError" not in stderr
