"""``ecocube demo [--out DIR]``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("ecocube-demo"),
              show_default=True, help="Folder for the demo's inputs, model, outputs and catalog.")
@click.option("--workers", type=int, default=None, help="Parallel tile workers (default: the allocation's CPUs).")
@click.option("--overwrite", is_flag=True, help="Make the demo anew in a folder that already holds one.")
@click.option("--no-progress", is_flag=True, help="No progress bar (there is one only when stderr is a terminal).")
@click.option("--chip", is_flag=True, help="Predict with an ONNX chip model (model.kind: chip) instead of the "
                                            "ensemble: chips stitched seam-free across tiles.")
def demo(out: Path, workers: int | None, overwrite: bool, no_progress: bool, chip: bool) -> None:
    """Make a small realistic data cube and run the whole flow on it.

    read → gap-fill → features → train the stacked ensemble → predict every tile in
    parallel → per-tile outputs in a local store → COG mosaics → STAC catalog + browser.
    No cluster, no cloud account, no internet.

    \b
    Example:
      ecocube demo --out ecocube-demo && ecocube browse ecocube-demo/output/catalog
    """
    from ..demo import run_demo
    from ..env import available_threads

    run_demo(out, workers=available_threads(workers), overwrite=overwrite, progress=False if no_progress else None,
             echo=click.echo, chip=chip)
