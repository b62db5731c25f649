"""ecocube.slurm: rendering (golden files), parsing (recorded Slurm output), and the whole
submit → status → resubmit → finalize cycle on the real single-node Slurm that
scripts/local-slurm.sh starts (scripts/test.sh starts it; the ``local_slurm`` fixture
starts it itself when SLURM_CONF is not set, and fails loudly when it cannot)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ecocube import slurm as S
from ecocube.config import config_from_dict, load_config
from ecocube.errors import ConfigError, GridError, SlurmError

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data" / "slurm"
LOCAL_SLURM = REPO / "scripts" / "local-slurm.sh"
FAKE = DATA / "fake_ecocube.py"
UPDATE_GOLDEN = os.environ.get("ECOCUBE_UPDATE_GOLDEN") == "1"

TILES5 = ["X0000_Y0000", "X0001_Y0000", "X0002_Y0000", "X0000_Y0001", "X0001_Y0001"]


def _cfg_dict(**slurm) -> dict:
    return {
        "name": "t7",
        "grid": {"crs": "EPSG:3035", "origin": [3900000, 3200000], "pixel_size": 10, "tile_size": 16},
        "aoi": {"tiles": TILES5},
        "inputs": {"sources": [{"name": "s2", "href": "in/{band}.tif", "bands": ["red", "nir"]}]},
        "model": {"classes": [{"code": 1, "name": "a"}, {"code": 2, "name": "b"}]},
        "output": {"store": "out"},
        "slurm": {"cpus_per_task": 1, "mem_per_cpu": "300M", "time": "1", "signal_seconds": 20,
                  "finalize_time": "1", "finalize_cpus": 1, **slurm},
    }


# =========================================================================== golden renders

GOLDEN_BASE = Path("/srv/campaigns/land cover 'pilot'")


def _golden_cfg(**slurm):
    d = _cfg_dict(**slurm)
    return config_from_dict(d, base_dir=GOLDEN_BASE, source="golden")


def _check_golden(name: str, text: str) -> None:
    path = DATA / name
    if UPDATE_GOLDEN:
        path.write_text(text)
    assert text == path.read_text(), f"rendering differs from {path} (ECOCUBE_UPDATE_GOLDEN=1 rewrites it)"


def test_array_script_golden():
    cfg = _golden_cfg(partition="compute", account="proj42", qos="normal", tiles_per_task=2,
                      site_lines=["module load python/3.11", "source $HOME/venvs/ecocube/bin/activate"],
                      extra_directives=["--constraint=skylake", "#SBATCH --exclusive"])
    text = S.render_array_script(cfg, run_yaml=GOLDEN_BASE / "run.yaml", tiles_file="slurm/SUB1/tiles.txt",
                                 n_tasks=3, throttle=2, submission="SUB1", command="ecocube")
    _check_golden("array.golden.sbatch", text)
    assert "#SBATCH --array=0-2%2" in text
    assert "#SBATCH --signal=B:TERM@20" in text
    assert "#SBATCH --output=\"/srv/campaigns/land cover 'pilot'/logs/ecocube-t7-%A_%a.log\"" in text


def test_finalize_script_golden():
    cfg = _golden_cfg(partition="compute", finalize_partition="serial", finalize_mem="8G", mem="4G")
    text = S.render_finalize_script(cfg, run_yaml=GOLDEN_BASE / "run.yaml", array_job_id="4242",
                                    submission="SUB1", command="ecocube")
    _check_golden("finalize.golden.sbatch", text)
    assert "#SBATCH --dependency=afterok:4242" in text
    assert "#SBATCH --partition=serial" in text and "#SBATCH --mem=8G" in text
    assert "--mem-per-cpu" not in text


def test_rendered_scripts_are_valid_bash_and_quote_weird_paths(tmp_path):
    """The rendered script, run by bash with a printing stand-in for ecocube, passes the run
    YAML path (spaces, quotes, $, %) through intact."""
    weird = tmp_path / 'camp aign\'s "$HOME"'
    weird.mkdir()
    cfg = config_from_dict(_cfg_dict(), base_dir=weird, source="weird")
    # a double quote in the folder cannot be expressed in an #SBATCH line: refused clearly
    with pytest.raises(ConfigError, match="cannot hold"):
        S.render_array_script(cfg, run_yaml=weird / "run.yaml", tiles_file="k", n_tasks=1, command="x")
    # without the double quote it renders, and bash sees exactly the original arguments
    ok = tmp_path / "camp aign's $HOME 100%"
    ok.mkdir()
    cfg = config_from_dict(_cfg_dict(), base_dir=ok, source="weird")
    text = S.render_array_script(cfg, run_yaml=ok / "run.yaml", tiles_file="slurm/S 1/tiles.txt", n_tasks=1,
                                 command="printf '<%s>\\n'")
    assert f'#SBATCH --output="{ok}/logs/ecocube-t7-%A_%a.log"'.replace("100%", "100%%") in text
    out = subprocess.run(["bash", "-s"], input=text, text=True, capture_output=True, check=True).stdout
    assert f"<run-task>\n<{ok / 'run.yaml'}>\n<--tiles-file>\n<slurm/S 1/tiles.txt>\n" in out
    fin = S.render_finalize_script(cfg, run_yaml=ok / "run.yaml", array_job_id="1", command="printf '<%s>\\n'")
    subprocess.run(["bash", "-n"], input=fin, text=True, check=True)
    out = subprocess.run(["bash", "-s"], input=fin, text=True, capture_output=True, check=True).stdout
    assert f"<finalize>\n<{ok / 'run.yaml'}>\n" in out


def test_directive_values():
    assert S.directive_value("compute", what="p") == "compute"
    assert S.directive_value("/a b/c", what="p") == '"/a b/c"'
    assert S.directive_value("/a/50%", what="p", pattern_suffix="-%j.log") == "/a/50%%-%j.log"
    with pytest.raises(ConfigError, match="cannot hold"):
        S.directive_value('/a"b', what="slurm.log_dir")
    with pytest.raises(ConfigError, match="cannot hold"):
        S.directive_value("/a\nb", what="slurm.log_dir")


def test_template_placeholders_and_signal_checks(tmp_path):
    (tmp_path / "array.sbatch").write_text("#!/bin/bash\n{{directives}}\n{{ecocube}} run-task {{ run_yaml }} {{nope}}\n")
    cfg = config_from_dict(_cfg_dict(templates=str(tmp_path)), base_dir=tmp_path)
    with pytest.raises(SlurmError, match=r"unknown placeholder\(s\) nope"):
        S.render_array_script(cfg, run_yaml="r.yaml", tiles_file="k", n_tasks=1, command="x")
    cfg = config_from_dict(_cfg_dict(templates=str(tmp_path / "missing")), base_dir=tmp_path)
    with pytest.raises(SlurmError, match="template not found"):
        S.render_array_script(cfg, run_yaml="r.yaml", tiles_file="k", n_tasks=1, command="x")
    cfg = config_from_dict(_cfg_dict(time="1", signal_seconds=60), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="signal_seconds"):
        S.array_directives(cfg, n_tasks=1, throttle=None)
    assert [S.minutes_from_time(t) for t in ("5", "5:30", "01:00:00", "1-00", "2-01:30", "0:00:01")] == \
        [5, 6, 60, 1440, 2970, 1]


def test_signal_within_slurms_60_s_early_margin_is_warned(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="ecocube.slurm"):
        S.array_directives(config_from_dict(_cfg_dict(time="2", signal_seconds=59), base_dir=tmp_path),
                           n_tasks=1, throttle=None)
    assert caplog.records == []
    with caplog.at_level("WARNING", logger="ecocube.slurm"):
        S.array_directives(config_from_dict(_cfg_dict(time="2", signal_seconds=60), base_dir=tmp_path),
                           n_tasks=1, throttle=None)
    assert [r.getMessage() for r in caplog.records] == [
        "slurm.signal_seconds (60 s) + the 60 s by which Slurm may send the TERM early (sbatch(1), --signal) "
        "is not shorter than slurm.time (2): tasks may be told to stop when they start"]


def test_default_command_is_this_python():
    cfg = _golden_cfg()
    assert S.ecocube_command(cfg) == f"{shlex.quote(sys.executable)} -m ecocube"
    cfg = _golden_cfg(command="apptainer exec eco.sif ecocube")
    assert S.ecocube_command(cfg) == "apptainer exec eco.sif ecocube"


# =========================================================================== tile lists


def test_tiles_file_round_trip_and_task_tiles(tmp_path):
    cfg = config_from_dict(_cfg_dict(), base_dir=tmp_path)
    tasks = S.split_tasks(TILES5, 2)
    assert tasks == [TILES5[0:2], TILES5[2:4], TILES5[4:5]]
    text = S.format_tiles_file(tasks, submission="S1", run_name="t7")
    assert S.parse_tiles_file(text) == tasks
    f = tmp_path / "tiles.txt"
    f.write_text(text)

    class _NoStore:  # a store that holds no such key: the local file is used
        def exists(self, key):
            return False

    got = S.task_tiles(cfg, str(f), 1, store=_NoStore())
    assert [t.id for t in got] == TILES5[2:4]
    assert got[0].shape == (16, 16)
    with pytest.raises(GridError, match="task id 3 out of range"):
        S.task_tiles(cfg, str(f), 3, store=_NoStore())
    with pytest.raises(SlurmError, match="no task id"):
        S.task_tiles(cfg, str(f), None, store=_NoStore())
    with pytest.raises(SlurmError, match="line 3: not a tile id"):
        S.parse_tiles_file("# c\nX0000_Y0000\nX0_Y\n", source="t")


def test_task_tiles_from_the_store_and_slurm_env(tmp_path, monkeypatch):
    from ecocube.store import open_store

    cfg = config_from_dict(_cfg_dict(), base_dir=tmp_path)
    store = open_store(cfg.output)
    store.put_bytes(S.format_tiles_file(S.split_tasks(TILES5, 3), submission="S", run_name="t7").encode(),
                    S.tiles_file_key("S"))
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert [t.id for t in S.task_tiles(cfg, S.tiles_file_key("S"))] == TILES5[3:]


def test_plan_dry_run_counts_and_estimates(tmp_path):
    cfg = config_from_dict(_cfg_dict(tiles_per_task=2, throttle=4), base_dir=tmp_path)
    states = {t: None for t in TILES5}
    states["X0001_Y0000"] = {"tile": "X0001_Y0000", "state": "done"}
    states["X0002_Y0000"] = {"tile": "X0002_Y0000", "state": "failed", "error": "boom"}
    plan = S.plan_submission(cfg, tmp_path / "run.yaml", states=states, submission="S1", command="ecocube")
    assert plan.tiles == ["X0000_Y0000", "X0002_Y0000", "X0000_Y0001", "X0001_Y0001"]
    assert plan.tasks == [["X0000_Y0000", "X0002_Y0000"], ["X0000_Y0001", "X0001_Y0001"]]
    assert "#SBATCH --array=0-1%4" in plan.array_script
    assert plan.memory_requested == 300 * 1024**2
    # 16x16 tiles, 3 years x 4 seasons x 2 bands, 2 classes, all layers
    per_px = 2 * 3 + 2 * 3 + 3 + 2 * 24 + 24 + 2 * 24
    assert plan.output_bytes == 4 * 256 * per_px
    assert plan.memory_per_task > 600 * 1024**2
    assert "4 of 5 tiles to do, 2 array tasks" in plan.summary()
    assert "warning: the estimate exceeds" in plan.summary()
    plan = S.plan_submission(cfg, tmp_path / "run.yaml", tiles_per_task=10, states=states, command="e")
    assert plan.n_tasks == 1


# =========================================================================== fitting the cluster


def test_split_campaign_packs_into_arrays_under_max_array_size():
    limits = S.ClusterLimits(max_array_size=1001, max_job_count=10000)
    split = S.split_campaign(7056, limits=limits)
    # 7056 tasks > 1001 per array: ceil(7056 / 1001) = 8 arrays, balanced at 7056 / 8 = 882 tasks
    assert split.tiles_per_task == 1 and split.n_tasks == 7056 and split.n_arrays == 8
    assert [p.n_tasks for p in split.parts] == [882] * 8
    assert [p.first for p in split.parts] == [882 * j for j in range(8)]
    assert "7056 tasks split into 8 array jobs of up to 882 tasks: MaxArraySize 1001" in split.reasons
    one = S.split_campaign(1001, limits=limits)
    assert one.n_arrays == 1 and one.parts[0].n_tasks == 1001
    two = S.split_campaign(1002, limits=limits)
    assert [p.n_tasks for p in two.parts] == [501, 501]
    assert S.split_campaign(0, limits=limits).parts == ()
    # slurm.tiles_per_task packs first: 7056 / 4 = 1764 tasks -> 2 arrays of 882
    four = S.split_campaign(7056, limits=limits, default_tiles_per_task=4)
    assert (four.n_tasks, [p.n_tasks for p in four.parts]) == (1764, [882, 882])


def test_split_campaign_raises_tiles_per_task_to_fit_job_limits():
    limits = S.ClusterLimits(max_array_size=1001, max_job_count=10000, max_submit_jobs=500, queued_user=0)
    split = S.split_campaign(7000, limits=limits)
    # k=14: 500 tasks + 1 array + 1 finalize = 502 > 500; k=15: 467 + 1 + 1 = 469
    assert split.tiles_per_task == 15 and split.n_tasks == 467 and split.n_arrays == 1
    assert any("raised to 15 tiles per task" in r and "MaxSubmitJobs 500" in r for r in split.reasons)
    # jobs already queued count: 300 of this user's leave 200
    busy = S.ClusterLimits(max_array_size=1001, max_job_count=10000, max_submit_jobs=500, queued_user=300)
    assert S.split_campaign(7000, limits=busy).tiles_per_task == 36  # ceil(7000/36)=195 +2 = 197 <= 200
    assert busy.task_budget() == (200, "MaxSubmitJobs 500 - 300 of yours queued")
    jobcount = S.ClusterLimits(max_array_size=1001, max_job_count=3000, queued=1000)
    assert S.split_campaign(7000, limits=jobcount).tiles_per_task == 4  # 1750 + 2 arrays + 1 <= 2000
    assert S.split_campaign(7000, limits=limits, max_tasks=100).tiles_per_task == 72  # 98 + 2 <= 100
    # a fixed --tiles-per-task that does not fit is refused, naming the limit and the least that fits
    with pytest.raises(SlurmError, match=r"7000 tiles at 2 per task make 3500 array tasks.*MaxSubmitJobs 500.*"
                                         r"at least 15"):
        S.split_campaign(7000, limits=limits, tiles_per_task=2)
    full = S.ClusterLimits(max_job_count=100, queued=100)
    with pytest.raises(SlurmError, match="takes no more jobs now"):
        S.split_campaign(10, limits=full)


def test_split_campaign_task_length():
    limits = S.ClusterLimits()
    split = S.split_campaign(100, limits=limits, tile_minutes=3, task_minutes=50, time_minutes=60)
    assert split.tiles_per_task == 16 and split.n_tasks == 7  # 50 // 3 = 16 tiles: 48 min of 60
    with pytest.raises(SlurmError, match=r"16 tiles per task at ~3 min each need ~48 min, more than slurm.time "
                                         r"\(30 min\)"):
        S.split_campaign(100, limits=limits, tile_minutes=3, task_minutes=50, time_minutes=30)


def test_cluster_limits_from_recorded_outputs():
    config = S.parse_scontrol_config("MaxArraySize            = 1001\nMaxJobCount             = 10000\n"
                                     "AccountingStorageType   = accounting_storage/none\n")
    lim = S.limits_from_config(config, queued=7)
    assert (lim.max_array_size, lim.max_job_count, lim.max_submit_jobs) == (1001, 10000, None)
    assert lim.task_budget() == (9993, "MaxJobCount 10000 - 7 queued")
    bare = S.limits_from_config({})
    assert (bare.max_array_size, bare.max_job_count) == (1001, 10000)
    assert "MaxArraySize not reported: Slurm's default 1001" in bare.notes
    assert S.parse_sacctmgr_max_submit("|\n500|\n200|\n") == 200
    assert S.parse_sacctmgr_max_submit("\n|\n") is None


def test_plan_splits_into_arrays_with_finalize_after_all(tmp_path):
    cfg = config_from_dict(_cfg_dict(tiles_per_task=1, throttle=1), base_dir=tmp_path)
    states = {t: None for t in TILES5}
    limits = S.ClusterLimits(max_array_size=2, max_job_count=100)
    plan = S.plan_submission(cfg, tmp_path / "run.yaml", states=states, submission="S1", command="ecocube",
                             limits=limits)
    assert [a.n_tasks for a in plan.arrays] == [2, 2, 1]
    assert [a.tiles_file for a in plan.arrays] == ["slurm/S1/tiles-000.txt", "slurm/S1/tiles-001.txt",
                                                   "slurm/S1/tiles-002.txt"]
    assert [a.tasks for a in plan.arrays] == [[[TILES5[0]], [TILES5[1]]], [[TILES5[2]], [TILES5[3]]], [[TILES5[4]]]]
    scripts = [a.script for a in plan.arrays]
    assert "#SBATCH --array=0-1%1" in scripts[0] and "--dependency" not in scripts[0]
    assert "#SBATCH --dependency=afterany:ARRAY_JOB_ID_0" in scripts[1]
    assert "#SBATCH --array=0-0%1" in scripts[2] and "#SBATCH --dependency=afterany:ARRAY_JOB_ID_1" in scripts[2]
    assert "--tiles-file slurm/S1/tiles-002.txt" in scripts[2]
    assert "#SBATCH --dependency=afterok:ARRAY_JOB_ID_0:ARRAY_JOB_ID_1:ARRAY_JOB_ID_2" in plan.finalize_script
    summary = plan.summary()
    assert "5 of 5 tiles to do, 5 array tasks of up to 1 tiles in 3 array jobs, at most 1 at once" in summary
    assert "split: 1 tiles per task: slurm.tiles_per_task; 5 tasks split into 3 array jobs of up to 2 tasks: " \
           "MaxArraySize 2" in summary
    assert "  array 2: tasks 4-4 of the campaign (--array=0-0), 1 tiles, list slurm/S1/tiles-002.txt" in summary
    assert "  finalize: afterok on all 3 array jobs" in summary
    # the CLI dry run prints the split and the first and last scripts, and submits nothing
    one = S.plan_submission(cfg, tmp_path / "run.yaml", states=states, submission="S1", command="ecocube",
                            limits=S.ClusterLimits())
    assert len(one.arrays) == 1 and one.arrays[0].tiles_file == "slurm/S1/tiles.txt"
    assert "#SBATCH --dependency=afterok:ARRAY_JOB_ID\n" in one.finalize_script


def test_format_status_lists_unfinished_tasks_of_large_campaigns():
    tasks = []
    for arr, n in (("500", 100), ("501", 50)):
        for i in range(n):
            tid = f"X{i:04d}_Y{int(arr) - 500:04d}"
            failed = (arr, i) == ("501", 7)
            tasks.append(S.TaskStatus(i, [tid], "FAILED" if failed else "COMPLETED", "7:0" if failed else "0:0",
                                      None, f"/logs/ecocube-t7-{arr}_{i}.log",
                                      {tid: "failed" if failed else "done"}, "boom" if failed else None, arr))
    tiles = {t.tiles[0]: next(iter(t.tile_states.values())) for t in tasks}
    sub = {"id": "S1", "arrays": [{"job_id": "500", "tiles_file": "a"}, {"job_id": "501", "tiles_file": "b"}],
           "array_job_id": "500", "n_tasks": 150, "n_tiles": 150}
    st = S.RunStatus(sub, tasks, None, tiles, {})
    text = S.format_status(st)
    assert "2 array jobs 500 501, 150 tasks, 150 tiles" in text
    rows = [ln for ln in text.splitlines() if re.match(r"^\s*50[01]_\d+ ", ln)]
    assert rows == ["501_7  FAILED        7:0    X0007_Y0001:failed"]
    assert "(149 completed tasks with all tiles done not listed; --all lists them)" in text
    assert "  task 501_7 (FAILED, exit 7:0): /logs/ecocube-t7-501_7.log" in text
    assert len(S.format_status(st, all_tasks=True).splitlines()) == len(text.splitlines()) + 149 - 1


def test_finalize_script_after_several_arrays_golden():
    cfg = _golden_cfg(partition="compute")
    text = S.render_finalize_script(cfg, run_yaml=GOLDEN_BASE / "run.yaml", array_job_id=["4242", "4243", "4244"],
                                    submission="SUB1", command="ecocube")
    _check_golden("finalize-3arrays.golden.sbatch", text)
    assert "#SBATCH --dependency=afterok:4242:4243:4244\n" in text
    assert "# array job 4242,4243,4244 succeeded (afterok)" in text


# =========================================================================== parsing recorded output


def test_parse_squeue_recorded():
    infos = S.parse_squeue((DATA / "squeue.txt").read_text())
    got = {(i.job_id, i.task_id): (i.state, i.reason) for i in infos}
    assert got[("6", 3)] == ("PENDING", "JobArrayTaskLimit")
    assert got[("6", 0)] == ("RUNNING", None)
    assert got[("7", None)] == ("PENDING", "Dependency")
    assert len(infos) == 6


def test_parse_scontrol_recorded():
    running = S.parse_scontrol_jobs((DATA / "scontrol_running.txt").read_text())
    by = {(i.job_id, i.task_id): i for i in running}
    # the aggregated pending record "ArrayTaskId=3-5%2" expands to three tasks
    assert {k for k, v in by.items() if v.state == "PENDING"} == {("6", 3), ("6", 4), ("6", 5)}
    done = {(i.job_id, i.task_id): i for i in S.parse_scontrol_jobs((DATA / "scontrol_done.txt").read_text())}
    assert done[("6", 1)].state == "FAILED" and done[("6", 1)].exit_code == "7:0"
    assert done[("6", 0)].state == "COMPLETED"
    assert ("6", 4) not in done  # cancelled while pending: slurmctld forgets it
    fin = S.parse_scontrol_jobs((DATA / "scontrol_fin_cancelled.txt").read_text())
    assert [(f.job_id, f.task_id, f.state, f.reason) for f in fin] == [
        ("7", None, "CANCELLED", "DependencyNeverSatisfied")]
    rec = S.parse_key_values((DATA / "scontrol_done.txt").read_text().splitlines()[0])
    assert rec["StdOut"] == "/scratch/campaign x/it's logs/ecocube-rec-6_5.log"
    assert rec["WorkDir"] == "/scratch/campaign x"


def test_parse_jobcomp_and_sacct_recorded():
    jc = {(i.job_id, i.task_id): i for i in S.parse_jobcomp((DATA / "jobcomp.txt").read_text())}
    assert jc[("6", 1)].state == "FAILED" and jc[("6", 1)].exit_code == "7:0"
    assert jc[("7", None)].state == "CANCELLED"
    sa = {(i.job_id, i.task_id): i for i in S.parse_sacct((DATA / "sacct.txt").read_text())}
    assert sa[("6", 1)].state == "FAILED" and sa[("6", 1)].exit_code == "7:0"
    assert sa[("6", 4)].state == "CANCELLED" and sa[("6", 4)].node is None
    assert sa[("6", 5)].state == "OUT_OF_MEMORY"
    assert {k for k, v in sa.items() if v.state == "PENDING"} == {("6", 6), ("6", 7), ("6", 8), ("7", None)}


def test_parse_small_pieces():
    assert S.parse_task_ranges("0-3,5,7-9%2") == [0, 1, 2, 3, 5, 7, 8, 9]
    assert S.parse_task_ranges("[1-5:2]") == [1, 3, 5]
    assert S.parse_sbatch_parsable("123\n") == "123"
    assert S.parse_sbatch_parsable("123;cluster2\n") == "123"
    with pytest.raises(SlurmError, match="no job id"):
        S.parse_sbatch_parsable("sbatch: error: x")
    cfg = S.parse_scontrol_config("Configuration data as of x\nJobCompLoc              = /a b/c.txt\n")
    assert cfg["JobCompLoc"] == "/a b/c.txt"


def test_last_error_line(tmp_path):
    log = tmp_path / "t.log"
    log.write_text("ecocube: array task 1_2\nreading...\necocube: error: tile X1: 404 http://x\nexits with 7\n")
    assert S.last_error_line(log) == "ecocube: error: tile X1: 404 http://x"
    log.write_text("all good\nlast line\n")
    assert S.last_error_line(log) == "last line"
    assert S.last_error_line(tmp_path / "none.log") is None


# =========================================================================== real Slurm


def _sh(*args, timeout=60, check=True, env=None):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=check,
                          env=env)


@pytest.fixture(scope="session")
def local_slurm():
    """The local Slurm: the one SLURM_CONF names (scripts/test.sh), else started here."""
    mp = pytest.MonkeyPatch()
    started = False
    conf = os.environ.get("SLURM_CONF")
    if not conf:
        was_up = _sh(LOCAL_SLURM, "status", check=False).returncode == 0
        up = _sh(LOCAL_SLURM, "up", timeout=120, check=False)
        assert up.returncode == 0, f"scripts/local-slurm.sh up failed:\n{up.stdout}\n{up.stderr}"
        conf = _sh(LOCAL_SLURM, "conf").stdout.strip()
        started = not was_up
        mp.setenv("SLURM_CONF", conf)
    state = _sh("sinfo", "-h", "-N", "-o", "%T", check=False)
    assert state.returncode == 0 and state.stdout.split(), f"Slurm is not answering: {state.stderr}"
    yield conf
    if started:
        _sh(LOCAL_SLURM, "down", timeout=120, check=False)
    mp.undo()


def _job_active(job_id: str) -> bool:
    out = _sh("squeue", "-h", "-j", job_id, "-o", "%i", check=False)
    return out.returncode == 0 and bool(out.stdout.strip())


def _wait_jobs(*job_ids, timeout=90.0):
    deadline = time.monotonic() + timeout
    ids = [j for j in job_ids if j]
    while time.monotonic() < deadline:
        if not any(_job_active(j) for j in ids):
            return
        time.sleep(0.5)
    _sh("scancel", *ids, check=False)
    raise AssertionError(f"jobs {ids} still active after {timeout}s:\n{_sh('squeue', check=False).stdout}")


def _make_run(folder: Path, **slurm) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    # --signal=B:TERM@20 may come up to 60 s early ("due to the resolution of event handling",
    # sbatch(1)): with --time=1 the TERM can reach a task at its start, so jobs that really run
    # get 10 minutes; the renders (golden files) keep the short limit
    slurm = {"time": "10", "finalize_time": "10", **slurm}
    data = _cfg_dict(command=f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE))}", **slurm)
    (folder / "run.yaml").write_text(yaml.safe_dump(data))
    return folder / "run.yaml"


def _store(run_yaml: Path):
    from ecocube.store import open_store

    return open_store(load_config(run_yaml).output)


def _runs(run_yaml: Path) -> list[str]:
    p = run_yaml.parent / "runs.log"
    return [ln.split()[0] for ln in p.read_text().splitlines()] if p.exists() else []


@pytest.mark.slurm
def test_array_fails_status_resubmit_finalize(local_slurm, tmp_path):
    run_yaml = _make_run(tmp_path / "camp aign's", tiles_per_task=2, throttle=2)
    (run_yaml.parent / "FAIL_TILES").write_text("X0002_Y0000\n")
    runner = CliRunner()
    res = runner.invoke(S_cli(), ["submit", str(run_yaml), "--no-preflight"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "3 array tasks" in res.output
    jobs = S.read_jobs(_store(run_yaml))["submissions"]
    assert len(jobs) == 1
    sub = jobs[0]
    assert f"array job {sub['array_job_id']} (3 tasks)" in res.output
    assert f"finalize job {sub['finalize_job_id']}" in res.output
    assert _store(run_yaml).get_bytes(sub["tiles_file"]).decode().splitlines()[2:] == [
        "X0000_Y0000 X0001_Y0000", "X0002_Y0000 X0000_Y0001", "X0001_Y0001"]
    _wait_jobs(sub["array_job_id"], sub["finalize_job_id"])

    cfg = load_config(run_yaml)
    st = S.slurm_status(cfg)
    states = {t.task_id: t.state for t in st.tasks}
    assert states == {0: "COMPLETED", 1: "FAILED", 2: "COMPLETED"}
    t1 = st.tasks[1]
    assert t1.exit_code == "7:0"
    assert t1.error_line == "ecocube: error: tile X0002_Y0000: planted failure"
    assert Path(t1.log_path).is_file() and "camp aign's/logs/" in t1.log_path
    assert t1.tile_states == {"X0002_Y0000": "failed", "X0000_Y0001": "pending"}
    assert st.finalize.state == "CANCELLED"
    assert st.counts()["tiles"] == {"done": 3, "failed": 1, "pending": 1}
    res = runner.invoke(S_cli(), ["status", str(run_yaml)], catch_exceptions=False)
    assert res.exit_code == 0
    assert "tiles of the run: 5  done 3  failed 1" in res.output
    assert f"task 1 (FAILED, exit 7:0): {t1.log_path}" in res.output
    assert "    ecocube: error: tile X0002_Y0000: planted failure" in res.output
    js = json.loads(runner.invoke(S_cli(), ["status", str(run_yaml), "--json"]).output)
    assert js["counts"]["tasks"] == {"COMPLETED": 2, "FAILED": 1}

    # fix the cause, resubmit only the failed/missing tiles; finalize runs behind them
    (run_yaml.parent / "FAIL_TILES").unlink()
    res = runner.invoke(S_cli(), ["resubmit", str(run_yaml), "--failed"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "2 of 5 tiles to do, 1 array tasks" in res.output
    sub2 = S.read_jobs(_store(run_yaml))["submissions"][-1]
    assert sub2["kind"] == "resubmit" and sub2["n_tiles"] == 2
    _wait_jobs(sub2["array_job_id"], sub2["finalize_job_id"])
    st = S.slurm_status(cfg)
    assert [t.state for t in st.tasks] == ["COMPLETED"]
    assert st.finalize.state == "COMPLETED", S.format_status(st)
    assert st.counts()["tiles"] == {"done": 5}
    assert json.loads(_store(run_yaml).get_bytes("catalog/catalog.json"))["tiles"] == sorted(TILES5)
    runs = _runs(run_yaml)
    # every tile processed once, except the failed one (twice); the rerun touched only its tiles
    assert sorted(runs) == sorted(TILES5 + ["X0002_Y0000"])
    assert runs[-2:] == ["X0002_Y0000", "X0000_Y0001"]


@pytest.mark.slurm
def test_scancel_mid_run_then_resubmit_completes(local_slurm, tmp_path):
    run_yaml = _make_run(tmp_path / "run", tiles_per_task=1, throttle=1)
    (run_yaml.parent / "SLEEP").write_text("2")
    cfg = load_config(run_yaml)
    plan = S.submit(cfg, run_yaml)
    assert plan.n_tasks == 5
    deadline = time.monotonic() + 60
    while len(_runs(run_yaml)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_runs(run_yaml)) >= 2, "the array did not start"
    _sh("scancel", plan.array_job_id)
    _wait_jobs(plan.array_job_id, plan.finalize_job_id)
    st = S.slurm_status(cfg)
    assert st.finalize is not None and st.finalize.state == "CANCELLED"
    counts = st.counts()["tiles"]
    assert counts.get("done", 0) >= 1 and counts.get("done", 0) < 5
    assert counts.get("interrupted", 0) == 1, S.format_status(st)  # the tile TERM reached
    interrupted = [t for t, s in st.tiles.items() if s == "interrupted"]
    done_before = sorted(t for t, s in st.tiles.items() if s == "done")

    (run_yaml.parent / "SLEEP").write_text("0")
    plan2 = S.resubmit_failed(cfg, run_yaml, throttle=2)
    assert sorted(plan2.tiles) == sorted(set(TILES5) - set(done_before))
    assert interrupted[0] in plan2.tiles
    _wait_jobs(plan2.array_job_id, plan2.finalize_job_id)
    st = S.slurm_status(cfg)
    assert st.counts()["tiles"] == {"done": 5}
    assert st.finalize.state == "COMPLETED", S.format_status(st)
    runs = _runs(run_yaml)
    # no tile done before the cancel ran again; every tile ends done exactly once after its start
    assert all(runs.count(t) == 1 for t in done_before)
    assert runs.count(interrupted[0]) == 2


@pytest.mark.slurm
def test_submit_refused_while_array_active_and_pending_finalize_moved(local_slurm, tmp_path):
    run_yaml = _make_run(tmp_path / "run", tiles_per_task=5)
    (run_yaml.parent / "SLEEP").write_text("3")
    cfg = load_config(run_yaml)
    plan = S.submit(cfg, run_yaml)
    try:
        with pytest.raises(SlurmError, match=f"still has 1 task.*scancel {plan.array_job_id}"):
            S.resubmit_failed(cfg, run_yaml)
    finally:
        _wait_jobs(plan.array_job_id, plan.finalize_job_id)
    # all done: a new submit sends only the finalize job
    plan2 = S.submit(cfg, run_yaml)
    assert plan2.array_job_id is None and plan2.tiles == []
    _wait_jobs(plan2.finalize_job_id)
    assert S.slurm_status(cfg).finalize.state == "COMPLETED"


@pytest.mark.slurm
def test_sbatch_errors_leave_nothing_submitted(local_slurm, tmp_path):
    def _our_jobs():
        return _sh("squeue", "-h", "-n", "ecocube-t7,ecocube-t7-finalize", "-o", "%i", check=False).stdout.split()

    run_yaml = _make_run(tmp_path / "bad", partition="nosuchpartition")
    with pytest.raises(SlurmError, match="(?i)invalid partition"):
        S.submit(load_config(run_yaml), run_yaml)
    assert S.read_jobs(_store(run_yaml))["submissions"] == []

    run_yaml = _make_run(tmp_path / "mem", mem="999999G")
    with pytest.raises(SlurmError, match="(?i)memory"):
        S.submit(load_config(run_yaml), run_yaml)

    # the array is accepted, the finalize job is not: the array is cancelled again
    run_yaml = _make_run(tmp_path / "fin", finalize_partition="nosuchpartition")
    with pytest.raises(SlurmError, match=r"(?i)invalid partition.*array job (\d+) just submitted was cancelled") as ei:
        S.submit(load_config(run_yaml), run_yaml)
    array_id = re.search(r"array job (\d+) just submitted", str(ei.value)).group(1)
    infos = S.query_jobs([array_id])
    assert infos and {i.state for i in infos.values()} <= {"CANCELLED", "COMPLETING"}, infos
    _wait_jobs(array_id, timeout=30)
    assert _our_jobs() == []
    assert S.read_jobs(_store(run_yaml))["submissions"] == []

    # no Slurm on PATH
    env = dict(os.environ, PATH=str(tmp_path / "empty"))
    res = subprocess.run([sys.executable, "-m", "ecocube", "slurm", "submit", str(run_yaml), "--no-preflight"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1
    assert "ecocube: error: squeue not found: is Slurm installed and on PATH?" in res.stderr or \
        "ecocube: error: sbatch not found" in res.stderr, res.stderr


@pytest.fixture
def max_array_size_2(local_slurm):
    """The local Slurm with MaxArraySize=2 (``local-slurm.sh set``: slurmctld restarted), restored after."""
    before = re.search(r"^MaxArraySize=(\d+)$", Path(local_slurm).read_text(), re.M)
    assert before, "local-slurm.sh writes MaxArraySize"
    _sh(LOCAL_SLURM, "set", "MaxArraySize=2", timeout=120)
    S.clear_cache()
    try:
        yield 2
    finally:
        _sh(LOCAL_SLURM, "set", f"MaxArraySize={before.group(1)}", timeout=120, check=False)
        S.clear_cache()


@pytest.mark.slurm
def test_campaign_split_into_arrays_on_real_slurm(max_array_size_2, tmp_path, monkeypatch):
    # the limit is real: one array of 3 tasks is refused by this controller
    refused = _sh("sbatch", "--array=0-2", "--output=/dev/null", "--wrap", "true", check=False)
    assert refused.returncode != 0 and "invalid job array specification" in refused.stderr.lower(), refused.stderr
    run_yaml = _make_run(tmp_path / "split", tiles_per_task=1, poll_seconds=60)
    (run_yaml.parent / "FAIL_TILES").write_text("X0000_Y0001\n")
    cfg = load_config(run_yaml)
    res = CliRunner().invoke(S_cli(), ["submit", str(run_yaml), "--no-preflight", "--dry-run"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "cluster: MaxSubmitJobs unknown: no accounting" in res.output and "MaxArraySize 2" in res.output
    assert "5 tasks split into 3 array jobs of up to 2 tasks: MaxArraySize 2" in res.output
    assert S.read_jobs(_store(run_yaml))["submissions"] == []
    plan = S.submit(cfg, run_yaml)
    assert [a.n_tasks for a in plan.arrays] == [2, 2, 1] and len(set(plan.array_job_ids)) == 3
    sub = S.read_jobs(_store(run_yaml))["submissions"][0]
    assert [a["job_id"] for a in sub["arrays"]] == plan.array_job_ids
    fin = _sh("scontrol", "show", "job", "-o", plan.finalize_job_id).stdout
    deps = re.search(r"Dependency=(\S+)", fin).group(1)
    assert all(f"afterok:{j}" in deps for j in plan.array_job_ids), deps
    _wait_jobs(*plan.array_job_ids, plan.finalize_job_id)

    # one status: every task of the three arrays, from one squeue and one scontrol call
    calls: list[list[str]] = []
    real = S.run_slurm_command

    def counting(args, **kw):
        calls.append(list(args))
        return real(args, **kw)

    monkeypatch.setattr(S, "run_slurm_command", counting)
    S.clear_cache()
    st = S.slurm_status(cfg)
    assert [c[0] for c in calls] == ["squeue", "scontrol", "scontrol"], calls  # + show config, cached after
    assert ["scontrol", "show", "job", "-o"] in calls
    assert [(t.array_job_id, t.task_id, t.state) for t in st.tasks] == [
        (plan.array_job_ids[0], 0, "COMPLETED"), (plan.array_job_ids[0], 1, "COMPLETED"),
        (plan.array_job_ids[1], 0, "COMPLETED"), (plan.array_job_ids[1], 1, "FAILED"),
        (plan.array_job_ids[2], 0, "COMPLETED")]
    assert st.finalize.state == "CANCELLED"
    assert st.counts()["tiles"] == {"done": 4, "failed": 1}
    text = S.format_status(st)
    assert f"3 array jobs {' '.join(plan.array_job_ids)}, 5 tasks, 5 tiles" in text
    assert f"  task {plan.array_job_ids[1]}_1 (FAILED, exit 7:0): " in text
    # within slurm.poll_seconds a second status asks Slurm nothing
    calls.clear()
    S.slurm_status(cfg)
    assert calls == []
    monkeypatch.undo()

    (run_yaml.parent / "FAIL_TILES").unlink()
    plan2 = S.resubmit_failed(cfg, run_yaml)
    assert plan2.tiles == ["X0000_Y0001"] and len(plan2.arrays) == 1
    _wait_jobs(*plan2.array_job_ids, plan2.finalize_job_id)
    st = S.slurm_status(cfg, max_age=0)
    assert st.counts()["tiles"] == {"done": 5}
    assert st.finalize.state == "COMPLETED", S.format_status(st)
    assert sorted(_runs(run_yaml)) == sorted(TILES5 + ["X0000_Y0001"])


@pytest.mark.slow
@pytest.mark.slurm
def test_campaign_benchmark_scaled_down(local_slurm, tmp_path):
    """scripts/bench/campaign.py at CI size: 300 tiles in 30 tasks, MaxArraySize 10 (3 arrays),
    2 injected failures resubmitted, then the real finalize in the Slurm finalize job over the
    stand-in's real tiny tile outputs: a catalog that validates, a class mosaic with every
    tile's value at its place."""
    out = tmp_path / "campaign.json"
    res = _sh(sys.executable, REPO / "scripts" / "bench" / "campaign.py", "--sizes", "300", "--tasks", "30",
              "--max-array-size", "10", "--fail", "2", "--json", out, timeout=900, check=False,
              env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    data = json.loads(out.read_text())
    r = data["results"][0]
    ph = r["phases"]
    assert r["tiles"] == 300 and r["tiles_per_task"] == 10 and r["all_done"]
    # the real finalize: 2 layers (class, proba of 2019), valid catalog, class values where each tile is
    assert ph["finalize"]["layers"] == 2 and ph["finalize"]["s3_requests"] > 300
    assert r["catalog"]["n_invalid"] == 0, r["catalog"]["invalid"]
    assert r["catalog"]["class_tiles_checked"] == 300 and r["catalog"]["class_tiles_wrong"] == 0
    assert r["catalog"]["ok"]
    assert len(ph["submit"]["arrays"]) == 3 and ph["submit"]["n_tasks"] == 30
    assert "30 tasks split into 3 array jobs of up to 10 tasks: MaxArraySize 10" in ph["submit"]["split"]
    # each failure stops its task: the failed tile and the 9 after it in that task are redone
    assert ph["status"]["tiles"] == {"done": 280, "failed": 2, "pending": 18}
    assert ph["resubmit"]["n_tiles"] == 20
    assert ph["slurm-status"]["tasks"] == {"COMPLETED": 28, "FAILED": 2}
    assert ph["slurm-status"]["slurm_calls"] == 3  # squeue, scontrol show config, scontrol show job
    # one listing page + one GET per record: no per-object HEAD
    assert ph["status-after"]["s3_requests"] == 1 + 300
    assert "MaxArraySize 10\n" not in Path(local_slurm).read_text() and "MaxArraySize=10\n" not in \
        Path(local_slurm).read_text()  # restored


@pytest.mark.slurm
def test_local_slurm_script_is_idempotent(local_slurm):
    first = _sh(LOCAL_SLURM, "up", timeout=120, env=dict(os.environ))
    assert "already up" in first.stderr
    assert _sh(LOCAL_SLURM, "conf").stdout.strip().endswith("slurm.conf")
    st = _sh(LOCAL_SLURM, "status")
    assert "localhost" in st.stdout


def S_cli():
    from ecocube.cli.slurm_cmd import slurm

    return slurm


@pytest.mark.parametrize("example", sorted((REPO / "slurm" / "examples").glob("*.yaml")), ids=lambda p: p.stem)
def test_site_examples_validate_and_render(example, tmp_path):
    section = yaml.safe_load(example.read_text())["slurm"]
    d = _cfg_dict()
    d["slurm"] = section
    cfg = config_from_dict(d, base_dir=tmp_path, source=str(example))
    text = S.render_array_script(cfg, run_yaml=tmp_path / "run.yaml", tiles_file="slurm/S/tiles.txt", n_tasks=7,
                                 throttle=cfg.slurm.throttle)
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    for line in section.get("site_lines", []):
        assert line in text
    assert f"#SBATCH --cpus-per-task={section['cpus_per_task']}" in text
    fin = S.render_finalize_script(cfg, run_yaml=tmp_path / "run.yaml", array_job_id="9")
    subprocess.run(["bash", "-n"], input=fin, text=True, check=True)


# =========================================================================== real ecocube in the jobs


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Demo inputs (2×2 tiles of 32 px, one year) and a small trained model."""
    from ecocube.demo import demo_config_dict, make_demo_inputs
    from ecocube.train import train_model

    root = tmp_path_factory.mktemp("demo run")
    spec = make_demo_inputs(root, tiles_x=2, tiles_y=2, tile_size=32, start_year=2019, end_year=2019,
                            n_samples=150)
    d = demo_config_dict(spec)
    d["model"].update(n_estimators=10, cv_folds=2)
    d["slurm"] = {"cpus_per_task": 1, "mem_per_cpu": "900M", "time": "10", "signal_seconds": 20,
                  "finalize_time": "10", "finalize_cpus": 1, "tiles_per_task": 2, "throttle": 2}
    (root / "run.yaml").write_text(yaml.safe_dump(d))
    train_model(load_config(root / "run.yaml"), spec.samples, "lc", threads=1)
    return root / "run.yaml"


@pytest.mark.slurm
def test_real_tiles_fail_resubmit_and_finalize_catalog(local_slurm, demo_run):
    """Real tile processing in the array: an input goes missing → both tasks fail with the
    URL in the error line → it comes back → resubmit --failed → finalize writes the catalog."""
    cfg = load_config(demo_run)
    gone = demo_run.parent / "inputs" / "2019" / "Q2" / "red.tif"
    hidden = gone.with_name("red.tif.hidden")
    gone.rename(hidden)
    try:
        plan = S.submit(cfg, demo_run)
        assert plan.n_tasks == 2 and len(plan.tiles) == 4
        _wait_jobs(plan.array_job_id, plan.finalize_job_id, timeout=180)
    finally:
        hidden.rename(gone)
    st = S.slurm_status(cfg)
    assert [t.state for t in st.tasks] == ["FAILED", "FAILED"], S.format_status(st)
    assert st.counts()["tiles"] == {"failed": 4}
    assert st.finalize.state == "CANCELLED"
    for t in st.tasks:
        assert "red.tif" in (t.error_line or ""), S.format_status(st)
    assert "Q2/red.tif" in S.format_status(st)

    plan2 = S.resubmit_failed(cfg, demo_run)
    assert sorted(plan2.tiles) == sorted(plan.tiles)
    _wait_jobs(plan2.array_job_id, plan2.finalize_job_id, timeout=180)
    st = S.slurm_status(cfg)
    assert st.counts()["tiles"] == {"done": 4}, S.format_status(st)
    assert st.finalize.state == "COMPLETED", S.format_status(st)
    store = _store(demo_run)
    catalog = json.loads(store.get_bytes("catalog/catalog.json"))
    assert catalog["type"] == "Catalog"
    assert len(store.list("class/")) == 4  # one class raster per tile (one year)


def test_packaged_templates_match_repo_templates():
    """The sbatch templates ship inside the package (wheel installs) and equal slurm/."""
    from ecocube.slurm import DEFAULT_TEMPLATE_DIR

    repo = Path(__file__).resolve().parents[1] / "slurm"
    for name in ("array.sbatch", "finalize.sbatch"):
        assert (DEFAULT_TEMPLATE_DIR / name).read_text() == (repo / name).read_text(), name


def test_record_state_reports_running_record_of_dead_process_as_stale():
    import socket
    import subprocess
    import sys
    from datetime import datetime, timezone

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rec = {"tile": "X0000_Y0000", "state": "running", "host": socket.gethostname(), "pid": proc.pid,
           "started": started, "heartbeat": started}
    assert S.record_state(rec) == "stale"
    alive = dict(rec, pid=os.getpid())  # this test process, started before the record
    assert S.record_state(alive) == "running"
    assert S.record_state(None) == "pending"
    assert S.record_state({"state": "DONE"}) == "done"
