#!/usr/bin/env python
"""Benchmark: a campaign of N tiles through the real local Slurm into SeaweedFS, at two sizes.

For each size (default 700 and 7000 tiles) it writes a run whose AOI is an N-tile grid, with
``slurm.command`` set to the job stand-in ``tests/data/slurm/fake_ecocube.py`` (the real
templates, the real ``ecocube.slurm.task_tiles`` tile lists and real status records written
through ``ecocube.status`` to the S3 store; no reading, gap-filling or prediction, but every
tile's planned GeoTIFFs written small and real, with their checksums in the record: the subject
is the campaign's bookkeeping and finalize, not the tile compute). With the controller's ``MaxArraySize`` set low (slurm.conf
set with ``scripts/local-slurm.sh set``, restored afterwards), it then times these phases, each in a
fresh child process so that its peak RSS and S3 request count are its own:

- ``submit``: tile states from the store, cluster limits, the split into arrays, sbatch;
- ``run``: the arrays on Slurm (wall time until squeue is empty; not a per-phase RSS);
- ``status``: ``ecocube status`` (every record, completeness summary) and ``slurm status``
  (every task of every array joined with the records; Slurm calls counted);
- ``resubmit``: the injected failures (``--fail`` tiles) fixed and resubmitted; ``rerun``
  waits for them and the finalize job;
- ``finalize-plan``: the check that every tile is done (tile states), as finalize starts;
- ``finalize``: the real :func:`ecocube.finalize.finalize` in the Slurm finalize job (the stand-in
  writes real tiny tile outputs, see ``OUTPUTS`` in its docstring): mosaics from VRTs, manifest,
  STAC catalog validated offline, browser; its time, S3 requests and peak RSS come from the job.
  The catalog is then downloaded, validated again and the class COG compared tile by tile.

Prints a table with, for each phase, wall time, S3 requests and peak RSS, and the growth from
the first to the last size as a ratio per 10x tiles; writes JSON.

    export SLURM_CONF=$(scripts/local-slurm.sh conf)       # scripts/local-slurm.sh up first
    python scripts/bench/campaign.py --sizes 700,7000 --max-array-size 1001
    python scripts/bench/campaign.py --sizes 300 --max-array-size 100 --json out.json   # CI size
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FAKE = REPO / "tests" / "data" / "slurm" / "fake_ecocube.py"
BUCKET = "campaign"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tile_ids(n: int) -> list[str]:
    """``n`` tiles of a grid 100 tiles wide (row by row)."""
    width = min(100, n)
    return [f"X{i % width:04d}_Y{i // width:04d}" for i in range(n)]


def run_config(n: int, *, store: str, endpoint: str, tiles_per_task: int, log_dir: Path,
               layers: tuple[str, ...] = ("class", "proba")) -> dict:
    return {
        "name": f"campaign-{n}",
        "grid": {"crs": "EPSG:3035", "origin": [3900000, 3200000], "pixel_size": 10, "tile_size": 16},
        "aoi": {"tiles": tile_ids(n)},
        "inputs": {"periods": {"start_year": 2019, "end_year": 2019, "season_size": 4},
                   "sources": [{"name": "s2", "href": "in/{band}.tif", "bands": ["red", "nir"]}]},
        "model": {"classes": [{"code": 1, "name": "a", "color": "#f2d16b"},
                              {"code": 2, "name": "b", "color": "#1a7f37"}]},
        "output": {"store": store, "s3": {"endpoint_url": endpoint, "region": "us-east-1"}, "layers": list(layers)},
        "slurm": {"cpus_per_task": 1, "mem_per_cpu": "200M", "time": "30", "signal_seconds": 20,
                  "finalize_time": "30", "finalize_cpus": 1, "tiles_per_task": tiles_per_task,
                  "log_dir": str(log_dir), "poll_seconds": 0,
                  "command": f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE))}"},
    }


# ------------------------------------------------------------------ child: one phase, measured


def _count_s3_requests() -> list[int]:
    """Count every botocore API call of this process (each is one S3 request; paginated
    listings count one per page)."""
    from botocore.client import BaseClient

    counter = [0]
    real = BaseClient._make_api_call

    def counting(self, operation_name, api_params):
        counter[0] += 1
        return real(self, operation_name, api_params)

    BaseClient._make_api_call = counting
    return counter


def child(phase: str, run_yaml: Path) -> dict:
    import resource

    counter = _count_s3_requests()
    from ecocube import slurm as S
    from ecocube.config import load_config
    from ecocube.status import summarize, tile_states

    slurm_calls: list[str] = []
    real = S.run_slurm_command

    def counting(args, **kw):
        slurm_calls.append(args[0])
        return real(args, **kw)

    S.run_slurm_command = counting
    cfg = load_config(run_yaml)
    t0 = time.perf_counter()
    out: dict = {}
    if phase == "submit":
        plan = S.submit(cfg, run_yaml)
        out = {"arrays": [a.job_id for a in plan.arrays], "finalize": plan.finalize_job_id, "n_tasks": plan.n_tasks,
               "tiles_per_task": plan.tiles_per_task, "split": list(plan.split_reasons)}
    elif phase == "status":  # what `ecocube status` does
        summary = summarize(tile_states(cfg, light=True))
        out["tiles"] = {k: v for k, v in summary.counts.items() if v}
        out["completeness"] = summary.overall_completeness
    elif phase == "slurm-status":  # what `ecocube slurm status` does
        st = S.slurm_status(cfg, max_age=0)
        out["tasks"] = st.counts()["tasks"]
        out["slurm_tiles"] = st.counts()["tiles"]
        out["status_text_lines"] = len(S.format_status(st).splitlines())
    elif phase == "resubmit":
        plan = S.resubmit_failed(cfg, run_yaml)
        out = {"arrays": [a.job_id for a in plan.arrays], "finalize": plan.finalize_job_id,
               "n_tiles": len(plan.tiles), "n_tasks": plan.n_tasks}
    elif phase == "finalize-plan":
        states = tile_states(cfg)
        out["not_done"] = sum(1 for r in states.values() if r is None or r.get("state") != "done")
    else:
        raise SystemExit(f"unknown phase {phase}")
    out["seconds"] = time.perf_counter() - t0
    out["s3_requests"] = counter[0]
    out["slurm_calls"] = len(slurm_calls)
    out["slurm_call_kinds"] = sorted(set(slurm_calls))
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def run_phase(phase: str, run_yaml: Path, env: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", phase, str(run_yaml)], capture_output=True,
                          text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"phase {phase} of {run_yaml} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ parent


def _sh(*args, check=True, env=None, timeout=120):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=check, env=env,
                          timeout=timeout)


LOCAL_SLURM = REPO / "scripts" / "local-slurm.sh"


def max_array_size(conf: Path) -> str:
    """The MaxArraySize slurm.conf gives now."""
    m = re.search(r"^MaxArraySize=(\d+)$", conf.read_text(), re.M)
    if not m:
        raise SystemExit(f"{conf} has no MaxArraySize line (not written by scripts/local-slurm.sh?)")
    return m.group(1)


def set_max_array_size(value: int | str) -> None:
    """Set the controller's MaxArraySize (slurmctld restarted)."""
    res = _sh(LOCAL_SLURM, "set", f"MaxArraySize={value}", check=False)
    if res.returncode != 0:
        raise SystemExit(f"cannot set MaxArraySize={value} (exit {res.returncode}): {res.stderr.strip()}")


def wait_jobs(ids: list[str], timeout: float) -> float:
    t0 = time.perf_counter()
    ids = [i for i in ids if i]
    while True:
        out = _sh("squeue", "-h", "-j", ",".join(ids), "-o", "%i", check=False)
        if out.returncode == 0 and not out.stdout.strip():
            return time.perf_counter() - t0
        if out.returncode != 0 and "Invalid job id" in out.stderr:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            _sh("scancel", *ids, check=False)
            raise SystemExit(f"jobs {ids} still active after {timeout:.0f} s")
        time.sleep(1.0)


def campaign(n: int, *, workdir: Path, s3, tasks: int, n_fail: int, env: dict, timeout: float) -> dict:
    import yaml

    folder = workdir / f"run-{n}"
    folder.mkdir(parents=True)
    k = max(1, math.ceil(n / tasks))
    data = run_config(n, store=f"s3://{BUCKET}/run-{n}", endpoint=s3.endpoint_url, tiles_per_task=k,
                      log_dir=folder / "logs")
    run_yaml = folder / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(data))
    ids = tile_ids(n)
    # injected failures: spread over the campaign (the first tile of evenly spaced tasks)
    fail = [ids[(i * n) // max(1, n_fail) // k * k] for i in range(n_fail)]
    (folder / "FAIL_TILES").write_text("\n".join(fail) + "\n")
    (folder / "OUTPUTS").write_text("")  # the stand-in writes real tiny tile outputs; finalize is the real one
    result: dict = {"tiles": n, "tiles_per_task": k, "failures_injected": len(fail), "phases": {}}
    ph = result["phases"]
    _log(f"[{n}] submit ({k} tiles per task)")
    ph["submit"] = run_phase("submit", run_yaml, env)
    _log(f"[{n}]   {ph['submit']['split']}")
    ph["run"] = {"seconds": wait_jobs(ph["submit"]["arrays"] + [ph["submit"]["finalize"]], timeout)}
    _log(f"[{n}] status")
    ph["status"] = run_phase("status", run_yaml, env)
    ph["slurm-status"] = run_phase("slurm-status", run_yaml, env)
    (folder / "FAIL_TILES").unlink()
    _log(f"[{n}] resubmit {ph['status']['tiles']}")
    ph["resubmit"] = run_phase("resubmit", run_yaml, env)
    ph["rerun"] = {"seconds": wait_jobs(ph["resubmit"]["arrays"] + [ph["resubmit"]["finalize"]], timeout)}
    ph["status-after"] = run_phase("status", run_yaml, env)
    ph["slurm-status-after"] = run_phase("slurm-status", run_yaml, env)
    ph["finalize-plan"] = run_phase("finalize-plan", run_yaml, env)
    metrics = folder / "finalize-metrics.json"
    if not metrics.exists():
        logs = sorted((folder / "logs").glob("*finalize*"))
        tail = logs[-1].read_text()[-2000:] if logs else "(no finalize log)"
        raise SystemExit(f"[{n}] the finalize job wrote no {metrics.name}:\n{tail}")
    ph["finalize"] = json.loads(metrics.read_text())
    _log(f"[{n}] check the published catalog and the class mosaic")
    result["catalog"] = check_catalog(s3, f"run-{n}", ids, folder)
    result["all_done"] = (ph["status-after"]["tiles"] == {"done": n}
                          and ph["slurm-status-after"]["slurm_tiles"] == {"done": n})
    return result


def check_catalog(s3, prefix: str, ids: list[str], folder: Path) -> dict:
    """Download the published catalog, validate it offline against the packaged schemas, and
    compare the class COG with the value the stand-in wrote into each tile (every tile's
    centre pixel). Returns counts; ``ok`` only when all of it holds."""
    import rasterio

    from ecocube.grid import TileGrid
    from ecocube.stac import validate_catalog

    sys.path.insert(0, str(FAKE.parent))
    from fake_ecocube import tile_value

    client = s3.client()
    local = folder / "catalog"
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/catalog/"):
        keys += [o["Key"] for o in page.get("Contents", [])]
    for key in keys:  # the catalog's JSON and HTML, COGs, VRTs, thumbnails (validation checks assets exist)
        target = local / key[len(prefix) + len("/catalog/"):]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, key, str(target))
    issues = validate_catalog(local / "catalog.json")
    objects = sum(1 for p in local.rglob("*.json"))
    grid = TileGrid.from_config(_grid())
    wrong = 0
    with rasterio.open(local / "class" / "class-2019-01-01" / "class.tif") as cog:
        for tile_id in ids:
            b = grid.tile(tile_id).bounds
            row, col = cog.index((b.left + b.right) / 2, (b.bottom + b.top) / 2)
            value = cog.read(1, window=((row, row + 1), (col, col + 1)))[0, 0]
            wrong += int(value != tile_value(tile_id, "class"))
    return {"objects_listed": len(keys), "json_files": objects, "invalid": [str(i) for i in issues][:5],
            "n_invalid": len(issues), "class_tiles_checked": len(ids), "class_tiles_wrong": wrong,
            "ok": not issues and wrong == 0}


def _grid():
    from types import SimpleNamespace

    g = run_config(1, store="", endpoint="", tiles_per_task=1, log_dir=Path("."))["grid"]
    return SimpleNamespace(**g)


def per_10x(small: float, big: float, n_small: int, n_big: int) -> float | None:
    if small <= 0 or n_big <= n_small:
        return None
    return (big / small) ** (1 / math.log10(n_big / n_small))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="700,7000", help="tile counts, comma-separated (default 700,7000)")
    ap.add_argument("--max-array-size", type=int, default=1001, help="the controller's MaxArraySize during the run")
    ap.add_argument("--tasks", type=int, default=60,
                    help="about this many array tasks per campaign (tiles per task = tiles / tasks)")
    ap.add_argument("--fail", type=int, default=3, help="injected tile failures per campaign")
    ap.add_argument("--timeout", type=float, default=3000, help="seconds to wait for the jobs of one phase")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--child", nargs=2, metavar=("PHASE", "RUN_YAML"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return 0
    if not os.environ.get("SLURM_CONF"):
        raise SystemExit("SLURM_CONF is not set: scripts/local-slurm.sh up; export SLURM_CONF=$(scripts/local-slurm.sh conf)")
    sys.path.insert(0, str(REPO))
    from tests.servers import SeaweedS3

    sizes = [int(x) for x in args.sizes.split(",")]
    conf = Path(os.environ["SLURM_CONF"])
    original = max_array_size(conf)
    results = []
    try:
        set_max_array_size(args.max_array_size)  # inside: a half-done set is restored too
        with SeaweedS3() as s3, tempfile.TemporaryDirectory(prefix="ecocube-campaign-") as tmp:
            s3.create_bucket(BUCKET)
            env = {**os.environ, **s3.env(), "PYTHONPATH": os.pathsep.join(
                [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
            for n in sizes:
                results.append(campaign(n, workdir=Path(tmp), s3=s3, tasks=args.tasks, n_fail=args.fail, env=env,
                                        timeout=args.timeout))
    finally:
        res = _sh(LOCAL_SLURM, "set", f"MaxArraySize={original}", check=False)
        if res.returncode != 0:
            _log(f"could not restore MaxArraySize={original} (exit {res.returncode}): {res.stderr.strip()}")
    phases = ["submit", "run", "status", "slurm-status", "resubmit", "rerun", "status-after", "slurm-status-after",
              "finalize-plan", "finalize"]
    heads = "".join(f"{str(r['tiles']) + ' tiles':>34}" for r in results)
    print(f"{'phase':<19}{heads}   x per 10x tiles (time)")
    print(f"{'':<19}" + "".join(f"{'s':>10} {'S3 req':>10} {'RSS MiB':>12}" for _ in results))
    growth = {}
    for p in phases:
        row = f"{p:<19}"
        for r in results:
            d = r["phases"][p]
            req = d.get("s3_requests")
            rss = d.get("peak_rss_bytes")
            row += f"{d['seconds']:>10.2f} {req if req is not None else '-':>10} " \
                   f"{(f'{rss / 2**20:.0f}' if rss else '-'):>12}"
        if len(results) > 1:
            a, b = results[0], results[-1]
            g = {k: per_10x(a["phases"][p].get(k) or 0, b["phases"][p].get(k) or 0, a["tiles"], b["tiles"])
                 for k in ("seconds", "s3_requests", "peak_rss_bytes")}
            growth[p] = g
            row += "   " + (f"{g['seconds']:.2f}" if g["seconds"] else "-")
        print(row)
    for r in results:
        print(f"{r['tiles']} tiles: {r['phases']['submit']['n_tasks']} tasks of {r['tiles_per_task']}; "
              f"split: {'; '.join(r['phases']['submit']['split'])}; status Slurm calls "
              f"{r['phases']['slurm-status']['slurm_calls']} ({', '.join(r['phases']['slurm-status']['slurm_call_kinds'])}); "
              f"resubmitted {r['phases']['resubmit']['n_tiles']} tiles; all done {r['all_done']}; "
              f"finalize {r['phases']['finalize']['layers']} layers, {r['phases']['finalize']['cpu_seconds']:.1f} CPU s; "
              f"catalog {r['catalog']['json_files']} JSON files, {r['catalog']['n_invalid']} invalid, "
              f"class mosaic wrong in {r['catalog']['class_tiles_wrong']} of {r['catalog']['class_tiles_checked']} tiles")
    out = {"benchmark": "campaign", "python": platform.python_version(), "machine": platform.machine(),
           "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "max_array_size": args.max_array_size,
           "results": results, "growth_per_10x": growth}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    ok = all(r["all_done"] and r["catalog"]["ok"] for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
