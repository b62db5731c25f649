"""Shared fixtures: real services, small grids, synthetic cubes, real data paths."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from servers import Nginx, SeaweedS3  # noqa: E402  (tests/ is on sys.path via rootdir conftest)

DATA = Path(__file__).parent / "data"


#: Fixtures that start a service or make a whole run: every test using one is ``slow``.
SLOW_FIXTURES = frozenset({
    "seaweed", "s3_bucket", "nginx_factory",  # real S3 server, nginx
    "demo_run",  # test_demo: the whole demo; test_slurm: demo inputs and a trained model
    "finished_run", "catalog_dir", "local_run",  # a mosaicked, catalogued run (stac, browse, mosaic)
    "belgium", "belgium_model",  # overlay and spatial CV on the real Sentinel-2 series
    "small_bundle",  # test_train: a model trained with spatial CV for the bundle round trips
})


def pytest_collection_modifyitems(config, items):
    """Markers (declared in pyproject.toml) for the fast subset, ``pytest -m "not slow"``.

    ``slow``: set by hand on long tests, and here on every test that uses one of
    :data:`SLOW_FIXTURES`. ``slurm`` tests count as ``slow`` too, so the fast subset never
    needs a cluster; a test that asks for the ``local_slurm`` fixture without the ``slurm``
    marker is a usage error (it would slip into the fast subset). Nothing is skipped here:
    without ``-m`` every test runs.
    """
    unmarked = [item.nodeid for item in items
                if "local_slurm" in getattr(item, "fixturenames", ()) and item.get_closest_marker("slurm") is None]
    if unmarked:
        raise pytest.UsageError("tests that use the local_slurm fixture need @pytest.mark.slurm: "
                                + ", ".join(unmarked))
    for item in items:
        if item.get_closest_marker("slow") is not None:
            continue
        if item.get_closest_marker("slurm") is not None or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _pinned_gdal_env(monkeypatch):
    """No test sees the developer's GDAL/AWS settings; remote reads never touch the internet."""
    for var in ("GDAL_DATA_CACHE", "CPL_DEBUG", "GDAL_HTTP_PROXY", "AWS_PROFILE", "AWS_S3_ENDPOINT",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "SLURM_ARRAY_TASK_ID", "SLURM_CPUS_PER_TASK", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real test data shipped in tests/data (see its README for sources and licences)."""
    return DATA


@pytest.fixture
def worldcereal(tmp_path) -> Path:
    """A private copy of the real Sentinel-2 L2A series over Flanders (64×64 px, 72 dates)."""
    dst = tmp_path / "worldcereal-be-2019"
    shutil.copytree(DATA / "worldcereal-be-2019", dst)
    return dst


@pytest.fixture(scope="session")
def seaweed():
    """A real S3 server (SeaweedFS) on 127.0.0.1 for the whole session."""
    with SeaweedS3() as server:
        yield server


@pytest.fixture
def s3_bucket(seaweed, monkeypatch, request):
    """A fresh bucket with AWS variables set, emptied and deleted after the test.

    SeaweedFS gives every bucket its own volumes: deleting them keeps the session server
    from running out.
    """
    import uuid

    for k, v in seaweed.env().items():
        monkeypatch.setenv(k, v)
    name = f"t-{request.node.name.lower()[:24].strip('-_[]')}-{uuid.uuid4().hex[:8]}".replace("_", "-")
    name = "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in name)
    client = seaweed.client()
    client.create_bucket(Bucket=name)
    yield name
    for up in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
        client.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if objs:
            client.delete_objects(Bucket=name, Delete={"Objects": objs, "Quiet": True})
    client.delete_bucket(Bucket=name)


@pytest.fixture
def nginx_factory():
    """Start nginx over a folder: ``server = nginx_factory(folder)``; stopped after the test."""
    started: list[Nginx] = []

    def _start(docroot: Path) -> Nginx:
        server = Nginx(Path(docroot)).__enter__()
        started.append(server)
        return server

    yield _start
    for server in started:
        server.__exit__(None, None, None)


@pytest.fixture
def small_grid():
    """A 3×2-tile grid in EPSG:3035 with 64×64-px tiles at 10 m."""
    from ecocube.grid import TileGrid

    return TileGrid(crs="EPSG:3035", origin_x=3900000.0, origin_y=3200000.0, pixel_size=10.0, tile_size=64)


@pytest.fixture
def synthetic_cube():
    """(time=24, band=3, y=32, x=32) float32 with a seasonal signal and ~35 % planted gaps."""
    rng = np.random.default_rng(0)
    t = np.arange(24)
    season = np.sin(2 * np.pi * t / 4)[:, None, None, None]
    cube = (0.3 + 0.2 * season + 0.02 * rng.standard_normal((24, 3, 32, 32))).astype(np.float32)
    gaps = rng.random((24, 1, 32, 32)) < 0.35
    cube[np.broadcast_to(gaps, cube.shape)] = np.nan
    return cube


@pytest.fixture
def make_cog(tmp_path):
    """Factory: ``make_cog(name, array (bands, y, x), transform=..., crs=..., nodata=...)`` → path."""
    import rasterio
    from affine import Affine

    def _make(name: str, array: np.ndarray, *, transform=None, crs="EPSG:32631", nodata=None,
              blocksize: int = 64) -> Path:
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[None]
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        transform = transform or Affine(10.0, 0, 574680.0, 0, -10.0, 5622440.0)
        profile = dict(driver="COG", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                       dtype=array.dtype, crs=crs, transform=transform, nodata=nodata,
                       blocksize=blocksize, compress="deflate")
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array)
        return path

    return _make
