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


# --------------------------------------------------------------------------- conventions


def _all_commands(group=None, path=()):
    """Every (sub)command as its argument path, groups included: ('slurm',), ('slurm', 'submit'), ..."""
    import click

    group = cli if group is None else group
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield (*path, name)
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, (*path, name))


ALL_COMMANDS = list(_all_commands())


def test_the_command_list_is_complete():
    # the groups' subcommands are walked too (a new command is checked without editing this test)
    assert {("slurm", "submit"), ("slurm", "status"), ("slurm", "resubmit"), ("config", "check"),
            ("config", "example"), ("stac", "build"), ("stac", "validate")} <= set(ALL_COMMANDS)
    assert {p[0] for p in ALL_COMMANDS} == set(COMMANDS)


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=" ".join)
def test_every_help_has_an_example(path):
    res = CliRunner().invoke(cli, [*path, "--help"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    at = next((i for i, ln in enumerate(lines) if ln.strip() in ("Example:", "Examples:")), None)
    assert at is not None, f"ecocube {' '.join(path)} --help has no 'Example:' line:\n{res.output}"
    example = lines[at + 1].strip()
    assert example.startswith(f"ecocube {path[0]}"), example  # an example of this very command


@pytest.mark.parametrize("path", [("run",), ("finalize",), ("slurm", "submit"), ("slurm", "resubmit"), ("grid",),
                                  ("vectorize",)], ids=" ".join)
def test_bulk_writers_and_submitters_have_dry_run(path):
    res = CliRunner().invoke(cli, [*path, "--help"])
    assert res.exit_code == 0 and "--dry-run" in res.output, res.output


def _run_yaml(folder, **extra):
    import yaml

    data = {
        "name": "conv",
        "grid": {"crs": "EPSG:3035", "origin": [3900000, 3200000], "pixel_size": 10, "tile_size": 16},
        "aoi": {"tiles": ["X0000_Y0000", "X0001_Y0000"]},
        "inputs": {"sources": [{"name": "s2", "href": "in/{band}.tif", "bands": ["red", "nir"]}]},
        "model": {"classes": [{"code": 1, "name": "a"}, {"code": 2, "name": "b"}]},
        "output": {"store": "out"},
        **extra,
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _main(argv, capsys):
    from ecocube.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


# (arguments, exit code, a text the one error line holds); {good}: a valid run.yaml, {bad}: one
# with an unknown key, {tmp}: the test's folder
EXIT_CODES = [
    (["no-such-command"], 2, "No such command 'no-such-command'"),
    (["run"], 2, "Missing argument 'RUN_YAML'"),
    (["run", "{good}", "--workers", "0"], 2, "Invalid value for '--workers'"),
    (["grid", "{good}"], 2, "Missing option '--out'"),
    (["slurm", "submit", "{good}", "--tiles-per-task", "x"], 2, "'x' is not a valid integer"),
    (["run", "{tmp}/missing.yaml", "--dry-run"], 2, "configuration file not found"),
    (["run", "{bad}", "--dry-run"], 2, "procesing"),
    (["finalize", "{bad}", "--dry-run"], 2, "procesing"),
    (["slurm", "submit", "{bad}", "--dry-run"], 2, "procesing"),
    (["config", "check", "{bad}"], 2, "procesing"),
    (["doctor", "{bad}"], 2, "procesing"),
    (["run", "{good}", "--config", "processing.block_size=3", "--dry-run"], 2, "block_size"),
    (["finalize", "{good}", "--dry-run"], 1, "no finished tile outputs to mosaic"),
    (["slurm", "resubmit", "{good}", "--failed", "--dry-run"], 1, "nothing to resubmit: no submission recorded"),
    (["stac", "validate", "{tmp}/not-a-catalog.json"], 1, "not-a-catalog.json"),
    (["vectorize", "{good}", "--dry-run"], 2, "no finished 'class' tiles in"),
    (["grid", "{good}", "--out", "{tmp}/grid.txt", "--dry-run"], 2, "unsupported grid file type '.txt'"),
    (["run", "{good}", "--dry-run"], 0, None),
    (["grid", "{good}", "--out", "{tmp}/grid.gpkg", "--dry-run"], 0, None),
    (["config", "example"], 0, None),
]


@pytest.mark.parametrize("argv, code, text", EXIT_CODES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_exit_codes(tmp_path, capsys, argv, code, text):
    import yaml

    good = _run_yaml(tmp_path)
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = _run_yaml(bad_dir, procesing={"threads": 2})
    (tmp_path / "not-a-catalog.json").write_text('{"type": "Feature"}')
    args = [a.format(good=good, bad=bad, tmp=tmp_path) for a in argv]
    got, out, err = _main(args, capsys)
    assert got == code, f"ecocube {' '.join(args)}: exit {got}, expected {code}\n{out}\n{err}"
    if argv[0] == "doctor":  # its report is the output: the configuration's FAIL line, then the machine's checks
        fail = next(ln for ln in out.splitlines() if ln.startswith("FAIL config"))
        assert text in fail and "unknown key" in fail, out
        assert "OK   gdal" in out
    elif text is not None:
        assert text in err, err
        assert "Traceback" not in err
    else:
        assert err.strip() == "" or "warning" in err.lower(), err
    if argv[:1] == ["config"] and code == 0:
        assert yaml.safe_load(out)["grid"]  # the example is a configuration


def test_run_dry_run_lists_the_tiles_and_writes_nothing(tmp_path, capsys):
    import json

    good = _run_yaml(tmp_path, aoi={"tiles": ["X0000_Y0000", "X0001_Y0000", "X0002_Y0000"]})
    code, out, _ = _main(["run", good, "--dry-run"], capsys)
    assert code == 0
    assert out.splitlines() == ["3 tiles: 3 to process, 0 done (skipped)", "to process: X0000_Y0000 X0001_Y0000 X0002_Y0000",
                                "(dry run: nothing processed)"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.json"))
    # a done record (as a finished tile leaves) moves that tile to the skipped ones
    (tmp_path / "out" / "status").mkdir(parents=True, exist_ok=True)
    (tmp_path / "out" / "status" / "X0001_Y0000.json").write_text(json.dumps({"tile": "X0001_Y0000", "state": "done"}))
    code, out, _ = _main(["run", good, "--dry-run"], capsys)
    assert code == 0
    assert out.splitlines()[:2] == ["3 tiles: 2 to process, 1 done (skipped; --overwrite redoes them)",
                                    "to process: X0000_Y0000 X0002_Y0000"]
    code, out, _ = _main(["run", good, "--dry-run", "--overwrite"], capsys)
    assert out.splitlines()[0] == "3 tiles: 3 to process, 0 done (skipped)"
