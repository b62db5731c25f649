"""``ecocube slurm submit|status|resubmit``: the run as Slurm array + finalize jobs."""

from __future__ import annotations

import json

import click

from .options import config_override_option, load_run_config, run_config_argument, run_preflight

tiles_per_task_option = click.option(
    "--tiles-per-task", "-k", type=click.IntRange(min=1), default=None,
    help="Tiles per array task (default: slurm.tiles_per_task).",
)
throttle_option = click.option(
    "--throttle", type=click.IntRange(min=1), default=None,
    help="At most N array tasks at once (%N; default: slurm.throttle).",
)


@click.group()
def slurm() -> None:
    """Submit, watch and resubmit the run on Slurm.

    \b
    Examples:
    ecocube slurm submit RUN.yaml --dry-run     # scripts, tile count, memory, volume
    ecocube slurm submit RUN.yaml               # array over tiles left + finalize (afterok)
    ecocube slurm status RUN.yaml               # tasks and tiles by state, failures + logs
    ecocube slurm resubmit RUN.yaml --failed    # failed/missing tiles only, finalize behind
    """


def _print_plan(plan, *, dry_run: bool) -> None:
    click.echo(plan.summary())
    if dry_run:
        arrays = plan.arrays
        shown = arrays if len(arrays) <= 2 else [arrays[0], arrays[-1]]
        for a in shown:
            head = "array job script" if len(arrays) == 1 else f"array job {a.index} of {len(arrays)}: script"
            click.echo(f"\n# ---- {head} ----")
            click.echo(a.script.rstrip("\n"))
        if len(shown) < len(arrays):
            click.echo(f"\n# ---- array jobs 1-{len(arrays) - 2}: as above, with their own tile list and task count ----")
        ids = "ARRAY_JOB_ID: the array job's id" if len(arrays) <= 1 else "ARRAY_JOB_ID_j: the ids of the array jobs"
        click.echo(f"\n# ---- finalize job script ({ids} at submission) ----")
        click.echo(plan.finalize_script.rstrip("\n"))
        click.echo("\n(dry run: nothing submitted)")
        return
    if plan.cancelled:
        click.echo(f"cancelled the pending finalize job(s) {' '.join(plan.cancelled)}")
    if len(plan.arrays) > 1:
        for a in plan.arrays:
            click.echo(f"array job {a.job_id} ({a.n_tasks} tasks: {a.first_task}-{a.first_task + a.n_tasks - 1})")
    elif plan.array_job_id:
        click.echo(f"array job {plan.array_job_id} ({plan.n_tasks} tasks)")
    else:
        click.echo("no tiles left to do: only the finalize job was submitted")
    click.echo(f"finalize job {plan.finalize_job_id}")


@slurm.command("submit")
@run_config_argument
@tiles_per_task_option
@throttle_option
@click.option("--dry-run", is_flag=True, help="Print the scripts and estimates; submit nothing.")
@click.option("--inputs/--no-inputs", "open_inputs", default=True,
              help="Pre-flight opens a sample of the input files (default) or skips it.")
@click.option("--no-preflight", is_flag=True,
              help="Skip the pre-flight entirely (test rigs whose slurm.command is a stand-in).")
@config_override_option
def submit_cmd(run_yaml, tiles_per_task, throttle, dry_run, open_inputs, no_preflight, overrides):
    """Submit the tiles left to do as an array job, and the finalize job behind it.

    The full pre-flight (as ``ecocube config check``) runs first: nothing is submitted
    while it finds a problem (exit 2, every problem on its own line).

    \b
    Examples:
      ecocube slurm submit run.yaml --dry-run
      ecocube slurm submit run.yaml --tiles-per-task 4
    """
    from .. import slurm as slurm_lib

    cfg = load_run_config(run_yaml, overrides)
    if not no_preflight:
        run_preflight(cfg, run_yaml, inputs=open_inputs)
    if dry_run:
        plan = slurm_lib.plan_submission(cfg, run_yaml, tiles_per_task=tiles_per_task, throttle=throttle)
    else:
        plan = slurm_lib.submit(cfg, run_yaml, tiles_per_task=tiles_per_task, throttle=throttle)
    _print_plan(plan, dry_run=dry_run)


@slurm.command("resubmit")
@run_config_argument
@click.option("--failed", "failed", is_flag=True, required=True,
              help="Resubmit the failed and missing tiles (required; the only mode).")
@tiles_per_task_option
@throttle_option
@click.option("--dry-run", is_flag=True, help="Print the scripts and estimates; submit nothing.")
@config_override_option
def resubmit_cmd(run_yaml, failed, tiles_per_task, throttle, dry_run, overrides):
    """A new array over failed/missing tiles only; the pending finalize job moves behind it.

    \b
    Examples:
      ecocube slurm resubmit run.yaml --failed --dry-run
      ecocube slurm resubmit run.yaml --failed
    """
    from .. import slurm as slurm_lib

    cfg = load_run_config(run_yaml, overrides)
    plan = slurm_lib.resubmit_failed(cfg, run_yaml, tiles_per_task=tiles_per_task, throttle=throttle,
                                     dry_run=dry_run)
    _print_plan(plan, dry_run=dry_run)


@slurm.command("status")
@run_config_argument
@click.option("--submission", default=None, help="A submission id (default: the latest).")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--all", "all_tasks", is_flag=True,
              help="List every task (default: above 100 tasks, only those not completed).")
@click.option("--wait", is_flag=True,
              help="Wait until every job of the submission has ended, then print the status.")
@click.option("--timeout", type=click.FloatRange(min=0), default=3600, show_default=True, metavar="SECONDS",
              help="With --wait: give up after this long (exit 1).")
@config_override_option
def status_cmd(run_yaml, submission, as_json, all_tasks, wait, timeout, overrides):
    """Tasks and tiles by state, with log paths and the error line of each failure.

    With --wait, Slurm is asked every slurm.poll_seconds until the submission's jobs have
    ended (a script's way to wait for a campaign).

    \b
    Example:
      ecocube slurm status run.yaml --wait
    """
    from .. import slurm as slurm_lib

    cfg = load_run_config(run_yaml, overrides)
    if wait:
        st = slurm_lib.wait_for_submission(cfg, submission=submission, timeout=timeout)
    else:
        st = slurm_lib.slurm_status(cfg, submission=submission)
    if as_json:
        click.echo(json.dumps(st.to_dict(), indent=2))
    else:
        click.echo(slurm_lib.format_status(st, all_tasks=all_tasks))
