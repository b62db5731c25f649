"""The README's tutorial, run as a user runs it: its marked blocks, in order, in a fresh folder.

A block is marked by the HTML comment on the line before its fence:

- ``<!-- tutorial -->``: shell commands, run by bash (``set -euo pipefail``) in the folder and
  environment the blocks before it left (``cd`` and ``export`` carry over);
- ``<!-- tutorial: file NAME -->``: the block's text saved as NAME in that folder;
- ``<!-- tutorial: server -->``: a command that serves until stopped: started, one page fetched
  from the address it prints, then stopped with SIGINT (Ctrl-C);
- ``<!-- tutorial: placeholders -->``: ``export NAME=VALUE`` lines whose values the reader
  replaces with their own; the test puts in its own services' (SeaweedFS S3).

Real parts only: the ``ecocube`` console script, the bundled Sentinel-2 sample, SeaweedFS,
the local Slurm (``scripts/local-slurm.sh``) running the array and finalize jobs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.io import MemoryFile
from servers import free_port
from test_slurm import local_slurm  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
TILES = ["X0000_Y0000", "X0000_Y0001", "X0001_Y0000", "X0001_Y0001"]

_BLOCK = re.compile(r"^<!-- tutorial(?::\s*(?P<kind>\w+)(?P<arg>[^>]*?))?\s*-->\n```(?P<lang>\w*)\n(?P<body>.*?)^```$",
                    re.MULTILINE | re.DOTALL)


def tutorial_blocks(text: str) -> list[dict]:
    """The marked blocks of the README in order: kind (shell/file/server/placeholders), arg, body."""
    out = []
    for m in _BLOCK.finditer(text):
        out.append({"kind": m["kind"] or "shell", "arg": (m["arg"] or "").strip(), "lang": m["lang"],
                    "body": m["body"]})
    return out


def test_the_tutorial_blocks_cover_the_flow():
    text = README.read_text()
    blocks = tutorial_blocks(text)
    assert text.count("<!-- tutorial") == len(blocks)  # every marker is followed by a block
    assert [b["kind"] for b in blocks] == ["shell", "file", "shell", "server", "placeholders", "shell", "shell"]
    assert blocks[1]["arg"] == "run.yaml" and blocks[1]["lang"] == "yaml"
    commands = [ln.strip() for b in blocks if b["kind"] in ("shell", "server") for ln in b["body"].splitlines()
                if ln.strip().startswith("ecocube ")]
    verbs = [" ".join(c.split()[1:3]) if c.split()[1] == "slurm" else c.split()[1] for c in commands]
    assert verbs == ["grid", "train", "doctor", "run", "status", "finalize", "browse", "slurm submit",
                     "slurm submit", "slurm status", "slurm resubmit", "slurm status"]
    assert "--dry-run" in commands[7] and "--dry-run" not in commands[8]


def _placeholders(body: str) -> list[str]:
    names = re.findall(r"^export ([A-Z0-9_]+)=\S+$", body, re.MULTILINE)
    assert len(names) == len(body.strip().splitlines()), f"a placeholder line is not 'export NAME=VALUE':\n{body}"
    return names


class Tutorial:
    """Runs blocks one after the other, carrying the folder and the exported variables."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.state = root / ".tutorial-state"
        self.state.mkdir()
        (self.state / "cwd").write_text(str(root))
        (self.state / "env").write_text("")
        self.env = env
        self.outputs: list[str] = []

    @property
    def cwd(self) -> Path:
        return Path((self.state / "cwd").read_text().strip())

    def _script(self, body: str) -> str:
        st = shlex.quote(str(self.state))
        return (f"set -euo pipefail\ncd \"$(cat {st}/cwd)\"\nsource {st}/env\n{body}\n"
                f"pwd > {st}/cwd\nexport -p > {st}/env\n")

    def shell(self, body: str, timeout: float = 900) -> str:
        proc = subprocess.run(["bash", "-c", self._script(body)], capture_output=True, text=True, env=self.env,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"tutorial block failed (exit {proc.returncode}):\n{body}\n--- stdout\n" \
                                     f"{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        self.outputs.append(proc.stdout)
        return proc.stdout

    def server(self, body: str) -> tuple[dict, str, str]:
        """Starts the block, fetches index.html and catalog.json from the address it prints,
        stops it with SIGINT; returns (catalog, index page, its whole output)."""
        proc = subprocess.Popen(["bash", "-c", self._script(f"exec {body.strip()}")], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=self.env, start_new_session=True,
                                stdin=subprocess.DEVNULL)
        try:
            seen = []
            url = None
            for line in proc.stdout:
                seen.append(line)
                m = re.search(r"serving .* at (http://127\.0\.0\.1:\d+)/", line)
                if m:
                    url = m.group(1)
                    break
            assert url, f"the server printed no address:\n{''.join(seen)}"
            with urllib.request.urlopen(f"{url}/index.html", timeout=30) as r:
                assert r.status == 200
                page = r.read().decode()
            with urllib.request.urlopen(f"{url}/catalog.json", timeout=30) as r:
                catalog = json.loads(r.read())
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"browse exited {proc.returncode} on SIGINT:\n{rest}"
        return catalog, page, "".join(seen) + rest


def _s3_raster(client, bucket: str, key: str) -> np.ndarray:
    data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    with MemoryFile(data) as mem, mem.open() as src:
        return src.read(1)


@pytest.mark.slurm
def test_the_readme_tutorial_runs_to_the_end(tmp_path, local_slurm, seaweed, s3_bucket):  # noqa: F811
    blocks = tutorial_blocks(README.read_text())
    root = tmp_path / "clone"
    root.mkdir()
    (root / "tests").symlink_to(REPO / "tests")  # the fresh clone's sample data
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the ecocube script
    env["PYTHONPATH"] = str(REPO)  # this checkout's code, in the commands and in the Slurm jobs
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        env.pop(k, None)  # only what the tutorial exports
    values = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
              "S3_ENDPOINT": seaweed.endpoint_url, "S3_BUCKET": s3_bucket}
    run = Tutorial(root, env)
    out: dict[str, str] = {}
    for b in blocks:
        if b["kind"] == "file":
            (run.cwd / b["arg"]).write_text(b["body"])
        elif b["kind"] == "placeholders":
            names = _placeholders(b["body"])
            assert sorted(names) == sorted(values), names
            run.shell("\n".join(f"export {n}={shlex.quote(values[n])}" for n in names))
        elif b["kind"] == "server":
            assert "--port 8000" in b["body"]
            catalog, page, served = run.server(b["body"].replace("--port 8000", f"--port {free_port()}"))
        else:
            text = run.shell(b["body"])
            key = next((ln.split()[1] if ln.split()[1] != "slurm" else " ".join(ln.split()[1:3])
                       for ln in b["body"].splitlines() if ln.startswith("ecocube ")), None)
            out[key] = text
    work = root / "flanders"
    assert run.cwd == work

    # steps 1-3 locally
    local = out["grid"]
    assert "wrote 4 tiles to grid.gpkg" in local
    assert re.search(r"overall accuracy 0\.\d+ \(majority baseline 0\.\d+\)", local), local
    assert "FAIL" not in local and re.search(r"all \d+ checks passed", local), local  # doctor
    assert "4 tiles: 4 done (0 skipped as already done), 0 failed" in local
    assert "4 tiles: 4 done, 0 failed" in local and "completeness 100.0 %" in local  # status
    assert f"catalog: {work / 'output' / 'catalog' / 'catalog.json'}" in local
    assert sorted(p.name for p in (work / "output" / "class").iterdir()) == TILES
    assert (work / "model" / "report.md").exists()

    # step 4: the served catalog is the one finalize wrote
    assert catalog == json.loads((work / "output" / "catalog" / "catalog.json").read_text())
    assert {ln["href"].strip("./").split("/")[0] for ln in catalog["links"] if ln["rel"] == "child"} >= {
        "class", "proba", "uncertainty", "flags"}
    assert "<html" in page.lower() and "catalog.json" in page
    assert "stopped" in served

    # step 5 on Slurm: the dry run submitted nothing, the jobs ran, the resubmit had nothing to redo
    slurm = out["slurm submit"]
    assert "(dry run: nothing submitted)" in slurm and "#SBATCH --array=0-1" in slurm
    assert re.search(r"^array job \d+ \(2 tasks\)$", slurm, re.MULTILINE), slurm
    assert "tasks: COMPLETED 2" in slurm and re.search(r"finalize: job \d+ COMPLETED", slurm), slurm
    again = out["slurm resubmit"]
    assert "no tiles left to do: only the finalize job was submitted" in again
    assert re.search(r"finalize: job \d+ COMPLETED", again), again

    client = seaweed.client()
    keys = {o["Key"] for page_ in client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket,
                                                                                 Prefix="flanders/")
            for o in page_.get("Contents", [])}
    assert "flanders/catalog/catalog.json" in keys
    for tile in TILES:
        record = json.loads(client.get_object(Bucket=s3_bucket, Key=f"flanders/status/{tile}.json")["Body"].read())
        assert record["state"] == "done"
        key = f"flanders/class/{tile}/2018-10-01/class.tif"
        with rasterio.open(work / "output" / "class" / tile / "2018-10-01" / "class.tif") as src:
            assert np.array_equal(_s3_raster(client, s3_bucket, key), src.read(1)), tile  # same model, same map
