"""``ecocube train RUN.yaml --samples FILE --class-field NAME``: fit the ensemble with spatial CV."""

from __future__ import annotations

from pathlib import Path

import click

from .options import config_override_option, load_run_config, overwrite_option, run_config_argument


@click.command()
@run_config_argument
@config_override_option
@click.option("--samples", "samples", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Labelled points or polygons: GeoPackage, GeoJSON, GeoParquet or CSV (x, y columns).")
@click.option("--class-field", "class_field", required=True,
              help="Field holding the integer class codes (model.task: regression: the continuous target).")
@click.option("--crs", "samples_crs", default=None,
              help="CRS of the samples (required for CSV; overrides the file's CRS otherwise).")
@click.option("--date-field", "date_field", default=None,
              help="Date or year field of the samples (default: model.date_field, else 'year'/'date' if present).")
@click.option("--year", type=int, default=None,
              help="Year of samples without a date field (default: every year of the run, labels assumed stable).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Model folder (default: model.path of the run).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads (default: the allocation).")
@overwrite_option
def train(run_yaml, overrides, samples: Path, class_field: str, samples_crs, date_field, year, out_dir, threads,
          overwrite: bool) -> None:
    """Train the stacked ensemble on labelled samples and evaluate it by spatial cross-validation.

    Writes the model bundle (model.joblib + model.json), report.json, report.md with PNG
    plots, and the feature table features.parquet (reused by a later run with the same
    samples and settings) to OUT.

    \b
    Example:
      ecocube train run.yaml --samples parcels.gpkg --class-field LC --year 2019
    """
    from ..train import train_model

    cfg = load_run_config(run_yaml, overrides)
    result = train_model(cfg, samples, class_field, out_dir=out_dir, year=year, threads=threads,
                         samples_crs=samples_crs, date_field=date_field, overwrite=overwrite)
    m = result.report["metrics"]
    b = m.get("baseline", {})
    cv = result.report["cv"]
    click.echo(f"trained on {m['n']} pixel samples ({result.report['samples']['pixels_dropped_nan']} dropped for gaps), "
               f"{cv['scheme']} CV: {cv['folds']} folds over {cv['groups']} groups")
    if result.report.get("task") == "regression":
        level = result.report["interval_level"]
        for name, sc in result.report["comparison"]["models"].items():
            cover = (f", {level:.0%} interval coverage {sc['interval_coverage']:.3f}"
                     if "interval_coverage" in sc else "")
            click.echo(f"  {name:<14} RMSE {sc['rmse']:.4g}, MAE {sc['mae']:.4g}, R² {sc['r2']:.3f}{cover}")
        for w in result.report["warnings"]:
            click.echo(f"warning: {w}")
        click.echo(f"model bundle and report: {result.out_dir}")
        return
    click.echo(f"overall accuracy {m['overall_accuracy']:.3f} (majority baseline {b.get('overall_accuracy', 0):.3f}), "
               f"weighted F1 {m['f1_weighted']:.3f} (baseline {b.get('f1_weighted', 0):.3f}), "
               f"macro F1 {m['f1_macro']:.3f}, log loss {m['log_loss']:.3f}")
    for c in m["per_class"]:
        auc = "-" if c["roc_auc"] is None else f"{c['roc_auc']:.3f}"
        click.echo(f"  {c['code']:>5} {c['name']:<20} P {c['precision']:.3f} R {c['recall']:.3f} "
                   f"F1 {c['f1']:.3f} AUC {auc} n={c['support']}")
    click.echo(f"model bundle and report: {result.out_dir}")
