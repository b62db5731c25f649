"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import RunConfig, load_config, parse_override


def run_config_argument(f):
    return click.argument("run_yaml", type=click.Path(dir_okay=False, path_type=Path))(f)


config_override_option = click.option(
    "--config",
    "overrides",
    multiple=True,
    metavar="KEY=VAL",
    help="Override a configuration key, e.g. --config processing.threads=4 (repeatable).",
)

overwrite_option = click.option(
    "--overwrite", is_flag=True, default=False, help="Redo and replace outputs that already exist."
)


def load_run_config(run_yaml: Path, overrides: tuple[str, ...] = ()) -> RunConfig:
    return load_config(run_yaml, dict(parse_override(o) for o in overrides))


def run_preflight(cfg: RunConfig, run_yaml: Path, *, inputs: bool = True):
    """The full pre-flight (``ecocube.preflight``): warnings to stderr, problems as one
    ConfigError (exit 2) listing each on its own line."""
    from ..preflight import preflight

    report = preflight(cfg, inputs=inputs)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    report.raise_for_problems(str(run_yaml))
    return report
