"""The ``ecocube`` command: parses arguments, calls the library, exits non-zero on error.

Subcommands live one module each in this package and are imported only when used, so
``ecocube --help`` is fast. Register a command in :data:`COMMANDS` as
``name: ("module:attribute", "one-line help")``.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from .. import __version__
from ..errors import EcocubeError
from ..signals import Stopped, handle_stop_signals

#: name -> ("ecocube.cli.<module>:<attribute>", one-line help shown by ``ecocube --help``)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("ecocube.cli.demo_cmd:demo", "Run the whole flow on an embedded demo cube (no cluster, no internet)."),
    "config": ("ecocube.cli.config_cmd:config", "Check a run configuration or print an example."),
    "grid": ("ecocube.cli.grid_cmd:grid", "Write the run's tile grid as GeoPackage/GeoJSON for QGIS."),
    "scenes": ("ecocube.cli.scenes_cmd:scenes", "Show the scenes found per tile and period, and which are kept."),
    "read": ("ecocube.cli.read_cmd:read", "Read one tile's input time series into the tile grid (debugging)."),
    "gapfill": ("ecocube.cli.gapfill_cmd:gapfill", "Gap-fill a stack of single-band rasters (TMWM or linear)."),
    "train": ("ecocube.cli.train_cmd:train", "Train the stacked ensemble on labelled samples, with spatial CV."),
    "run-tile": ("ecocube.cli.run_cmd:run_tile", "Process one tile: read, gap-fill, predict, write outputs."),
    "run": ("ecocube.cli.run_cmd:run", "Process every tile of the run locally, in parallel."),
    "run-task": ("ecocube.cli.run_cmd:run_task", "Process the tiles of one Slurm array task."),
    "status": ("ecocube.cli.run_cmd:status", "Show done / failed / pending tiles and completeness."),
    "slurm": ("ecocube.cli.slurm_cmd:slurm", "Submit, watch and resubmit the run on Slurm."),
    "mosaic": ("ecocube.cli.finalize_cmd:mosaic", "Mosaic the tile outputs into COGs and VRTs."),
    "stac": ("ecocube.cli.finalize_cmd:stac", "Build or validate the STAC catalog."),
    "finalize": ("ecocube.cli.finalize_cmd:finalize", "Mosaic + STAC catalog + browser: the job Slurm runs last."),
    "vectorize": ("ecocube.cli.vectorize_cmd:vectorize", "Turn class maps into polygons (GeoPackage, GeoParquet, GeoJSON)."),
    "report": ("ecocube.cli.report_cmd:report", "Write one HTML page on a run: tiles by state, failures, time, memory, gaps, accuracy."),
    "doctor": ("ecocube.cli.doctor_cmd:doctor", "Check this machine and a run: GDAL/PROJ, threads, Slurm, S3, inputs, scratch."),
    "browse": ("ecocube.cli.finalize_cmd:browse", "Serve a catalog folder on 127.0.0.1 for browsing and range reads."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attr = target[0].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return _unavailable(cmd_name, target[1])
            raise
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _unavailable(name: str, help_text: str) -> click.Command:
    @click.command(name=name, help=help_text, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def _cmd(args):
        raise click.ClickException(f"'{name}' is not available in this version of ecocube")

    return _cmd


def configure_logging(verbosity: int) -> None:
    # default: warnings only (results are printed, progress has a bar); -v info, -vv debug
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    if verbosity < -1:
        level = logging.CRITICAL
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    # GDAL messages go through rasterio's loggers; keep them quiet unless -vv
    logging.getLogger("rasterio").setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "numba", "matplotlib", "PIL", "pyogrio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="ecocube")
@click.option("-v", "--verbose", count=True, help="More log output: -v progress details, -vv debug.")
@click.option("-q", "--quiet", count=True, help="Less log output: -q errors only.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int) -> None:
    """ecocube: gap-filled, ML-predicted data cubes from satellite archives, tile by tile."""
    ctx.ensure_object(dict)
    ctx.obj["verbosity"] = verbose - quiet
    configure_logging(verbose - quiet)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: typed ecocube errors become one clear line and their exit code."""
    try:
        with handle_stop_signals():
            cli.main(args=argv, prog_name="ecocube", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("ecocube: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EcocubeError as exc:
        click.echo(f"ecocube: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Stopped as exc:
        click.echo(f"ecocube: stopped by {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("ecocube: interrupted", err=True)
        sys.exit(130)
    sys.exit(0)
