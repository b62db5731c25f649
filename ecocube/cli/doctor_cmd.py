"""``ecocube doctor [RUN.yaml]``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

# no import of ecocube.config here: it needs PROJ at import, and a broken PROJ is what the doctor finds


@click.command()
@click.argument("run_yaml", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--config", "overrides", multiple=True, metavar="KEY=VAL",
              help="Override a configuration key, e.g. --config processing.threads=4 (repeatable).")
@click.option("--inputs/--no-inputs", "open_inputs", default=True,
              help="Open a sample of the run's input files (default) or skip it (no network).")
def doctor(run_yaml, overrides, open_inputs) -> None:
    """Check that this machine (and the run in RUN_YAML) is ready: GDAL/PROJ and drivers,
    threads of the allocation, Slurm and the partition's limits, S3 credentials (never
    printed), a sample of inputs, the store, free scratch space. One line per check, OK or
    FAIL with the fix; exit 1 on any FAIL, 2 when RUN_YAML is not a valid configuration
    (the machine is checked all the same).

    \b
    Example:
      ecocube doctor run.yaml
    """
    from ..doctor import Check, run_doctor
    from ..errors import EcocubeError

    cfg, problem = None, None
    if run_yaml:
        try:
            from .options import load_run_config

            cfg = load_run_config(run_yaml, overrides)
        except (EcocubeError, ValueError) as exc:  # the environment is still checked
            text = " ".join(ln.strip() for ln in str(exc).strip().splitlines())  # every problem, one line
            problem = Check("config", False, text if str(run_yaml) in text else f"{run_yaml}: {text}",
                            "fix the file (ecocube config check RUN.yaml), or the environment below")
    checks = run_doctor(cfg, inputs=open_inputs)
    if problem is not None:
        checks.insert(0, problem)
    for check in checks:
        click.echo(check.line())
    failed = [c for c in checks if c.ok is False]
    click.echo(f"{len(failed)} of {len(checks)} checks failed" if failed else f"all {len(checks)} checks passed")
    if failed:
        sys.exit(2 if problem is not None else 1)
