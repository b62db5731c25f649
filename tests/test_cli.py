"""The ``ecocube`` command itself: help, version, error exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from ecocube import __version__
from ecocube.cli import COMMANDS, cli


def test_help_lists_every_command_with_one_line():
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0
    for name, (_, help_text) in COMMANDS.items():
        line = next(ln for ln in res.output.splitlines() if ln.strip().startswith(name + " "))
        assert help_text.split()[0] in line


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_working_help(name):
    import importlib

    module, _, attr = COMMANDS[name][0].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))  # really implemented
    res = CliRunner().invoke(cli, [name, "--help"])
    assert res.exit_code == 0, res.output
    assert "not available" not in res.output
    assert "Usage:" in res.output


def test_version():
    res = CliRunner().invoke(cli, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output


@pytest.mark.slow
def test_console_script_error_is_one_line_with_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ecocube", "config", "check", str(tmp_path / "missing.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("ecocube: error: configuration file not found")
    assert "Traceback" not in proc.stderr
