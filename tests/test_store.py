"""Stores: a local folder and a real S3 server (SeaweedFS), same behaviour."""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest

from ecocube.config import OutputConfig, S3Config
from ecocube.errors import ConfigError, StoreError
from ecocube.store import (
    LOCAL_TMP_DIR,
    LocalStore,
    ObjectNotFound,
    S3Store,
    norm_key,
    open_store,
    parse_store_url,
    probe_s3_object,
    sha256_file,
    store_for,
)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    seaweed = request.getfixturevalue("seaweed")
    bucket = request.getfixturevalue("s3_bucket")
    return S3Store(bucket, "runs/a", endpoint_url=seaweed.endpoint_url, region="us-east-1",
                   multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20)


def test_put_get_list_delete_round_trip(store, tmp_path):
    data = b"hello ecocube\n" * 100
    info = store.put_bytes(data, "status/X0001_Y0002.json")
    assert info.size == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()
    assert store.exists("status/X0001_Y0002.json")
    assert not store.exists("status/X0009_Y0009.json")
    assert store.get_bytes("status/X0001_Y0002.json") == data
    assert store.info("status/X0001_Y0002.json") == info

    src = tmp_path / "a.tif"
    src.write_bytes(os.urandom(1000))
    store.put_file(src, "class/X0001_Y0002/2019-01-01/class.tif")
    assert src.exists()  # not moved
    out = store.get_file("class/X0001_Y0002/2019-01-01/class.tif", tmp_path / "back.tif")
    assert out.read_bytes() == src.read_bytes()

    assert store.list("") == ["class/X0001_Y0002/2019-01-01/class.tif", "status/X0001_Y0002.json"]
    assert store.list("status/") == ["status/X0001_Y0002.json"]
    assert store.list("class/X0001") == ["class/X0001_Y0002/2019-01-01/class.tif"]
    assert store.list("nothing/") == []

    store.delete("status/X0001_Y0002.json")
    store.delete("status/X0001_Y0002.json")  # missing is fine
    assert store.list("status/") == []
    with pytest.raises(ObjectNotFound, match="X0001_Y0002.json"):
        store.get_bytes("status/X0001_Y0002.json")
    with pytest.raises(FileNotFoundError):  # also a builtin
        store.info("status/X0001_Y0002.json")
    store.delete_many(["class/X0001_Y0002/2019-01-01/class.tif"])
    assert store.list("") == []


def test_put_file_move_and_overwrite(store, tmp_path):
    first = tmp_path / "one.bin"
    first.write_bytes(b"1" * 10)
    store.put_file(first, "k/a.bin", move=True)
    assert not first.exists()
    second = tmp_path / "two.bin"
    second.write_bytes(b"2" * 20)
    info = store.put_file(second, "k/a.bin", move=True)
    assert store.get_bytes("k/a.bin") == b"2" * 20
    assert store.info("k/a.bin") == info
    assert store.list("k/") == ["k/a.bin"]


def test_urls_and_gdal_paths(tmp_path):
    local = LocalStore(tmp_path)
    assert local.url("a/b.tif") == str(tmp_path / "a" / "b.tif")
    assert local.gdal_path("a/b.tif") == str(tmp_path / "a" / "b.tif")
    s3 = S3Store("bkt", "/pre/fix/", endpoint_url="http://127.0.0.1:1")
    assert s3.url("a/b.tif") == "s3://bkt/pre/fix/a/b.tif"
    assert s3.gdal_path("a/b.tif") == "/vsis3/bkt/pre/fix/a/b.tif"
    assert S3Store("bkt").url("x.json") == "s3://bkt/x.json"


@pytest.mark.parametrize("bad", ["", "/abs", "a/../b", "a//b", "a\\b", "./a", f"{LOCAL_TMP_DIR}/x", " a"])
def test_bad_keys_are_refused(bad, tmp_path):
    with pytest.raises(StoreError, match="invalid store key"):
        norm_key(bad)
    with pytest.raises(StoreError):
        LocalStore(tmp_path).put_bytes(b"x", bad)


def test_open_store_from_config(tmp_path):
    local = open_store(OutputConfig(store=str(tmp_path / "out"), fsync=False))
    assert isinstance(local, LocalStore) and local.root == tmp_path / "out" and local.fsync is False
    s3 = open_store(OutputConfig(store="s3://bucket/some/prefix",
                                 s3=S3Config(endpoint_url="http://127.0.0.1:9", region="eu-west-1",
                                             multipart_threshold_mb=8, multipart_chunksize_mb=6)))
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.endpoint_url, s3.region) == ("bucket", "some/prefix", "http://127.0.0.1:9",
                                                                  "eu-west-1")
    assert (s3.multipart_threshold, s3.multipart_chunksize) == (8 * 2**20, 6 * 2**20)
    assert parse_store_url("file:///x/y") == ("local", "/x/y", "")
    with pytest.raises(ConfigError, match="unsupported scheme"):
        parse_store_url("gs://bucket/x")
    with pytest.raises(ConfigError, match="no bucket"):
        parse_store_url("s3:///x")


def test_store_for_returns_the_given_store_or_opens_the_runs(tmp_path):
    class _Run:
        output = OutputConfig(store=str(tmp_path / "run-out"), fsync=False)

    given = LocalStore(tmp_path / "given")
    assert store_for(_Run(), given) is given
    opened = store_for(_Run())
    assert isinstance(opened, LocalStore) and opened.root == tmp_path / "run-out" and opened.fsync is False


def test_probe_s3_object_tells_present_from_missing(seaweed, s3_bucket):
    S3Store(s3_bucket, endpoint_url=seaweed.endpoint_url, region="us-east-1").put_bytes(b"abc", "in/a.tif")
    kw = {"endpoint_url": seaweed.endpoint_url, "region": "us-east-1", "timeout": 5}
    assert probe_s3_object(f"s3://{s3_bucket}/in/a.tif", **kw) == (200, "ok")
    code, detail = probe_s3_object(f"/vsis3/{s3_bucket}/in/missing.tif", **kw)
    assert code == 404 and "HeadObject" in detail


def test_s3_store_pickles_without_its_client(seaweed, s3_bucket):
    store = S3Store(s3_bucket, endpoint_url=seaweed.endpoint_url, region="us-east-1")
    store.put_bytes(b"abc", "a.txt")
    assert store._client is not None
    clone = pickle.loads(pickle.dumps(store))
    assert clone._client is None
    assert clone.get_bytes("a.txt") == b"abc"


def test_s3_errors_are_typed_and_name_the_url(seaweed, s3_bucket, monkeypatch):
    missing_bucket = S3Store("no-such-bucket-ecocube", endpoint_url=seaweed.endpoint_url, region="us-east-1")
    with pytest.raises(StoreError, match="s3://no-such-bucket-ecocube/a.json"):
        missing_bucket.get_bytes("a.json")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    bad = S3Store(s3_bucket, endpoint_url=seaweed.endpoint_url, region="us-east-1", max_attempts=1)
    with pytest.raises(StoreError) as info:
        bad.put_bytes(b"{}", "a.json")
    assert f"s3://{s3_bucket}/a.json" in str(info.value)
    assert "wrong-secret-value" not in str(info.value)  # credentials never appear in messages


def test_s3_multipart_upload_keeps_checksum_metadata(seaweed, s3_bucket, tmp_path):
    store = S3Store(s3_bucket, "p", endpoint_url=seaweed.endpoint_url, region="us-east-1",
                    multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20, max_concurrency=2)
    big = tmp_path / "big.tif"
    big.write_bytes(np.random.default_rng(0).integers(0, 255, 12 * 2**20, dtype=np.uint8).tobytes())
    info = store.put_file(big, "composite/X0000_Y0000/2019-01-01/blue.tif")
    head = seaweed.client().head_object(Bucket=s3_bucket, Key="p/composite/X0000_Y0000/2019-01-01/blue.tif")
    assert "-" in head["ETag"]  # a multipart ETag: md5-of-parts + "-N"
    assert store.info("composite/X0000_Y0000/2019-01-01/blue.tif") == info
    assert info.sha256 == sha256_file(big) and info.size == 12 * 2**20


def test_s3_killed_multipart_upload_leaves_no_object_and_is_cleaned(seaweed, s3_bucket):
    """A multipart upload that never completes (process killed) is invisible under its key."""
    client = seaweed.client()
    key = "p/class/X0001_Y0001/2019-01-01/class.tif"
    up = client.create_multipart_upload(Bucket=s3_bucket, Key=key)
    client.upload_part(Bucket=s3_bucket, Key=key, UploadId=up["UploadId"], PartNumber=1, Body=b"x" * (5 * 2**20))
    store = S3Store(s3_bucket, "p", endpoint_url=seaweed.endpoint_url, region="us-east-1")
    assert not store.exists("class/X0001_Y0001/2019-01-01/class.tif")
    assert store.list("") == []
    assert store.incomplete_uploads("class/X0001_Y0001/") == [("class/X0001_Y0001/2019-01-01/class.tif",
                                                                up["UploadId"])]
    assert store.cleanup_stale(["class/X0009_Y0009/"]) == 0  # other tiles' uploads are left alone
    assert store.cleanup_stale(["class/X0001_Y0001/"]) == 1
    assert store.incomplete_uploads("") == []


def test_local_store_is_atomic_under_sigkill(tmp_path):
    """A writer killed mid-copy leaves the final key absent; cleanup_stale removes its temp file."""
    root = tmp_path / "store"
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (64 * 2**20))
    code = (
        "import sys, shutil, os, time\n"
        "from ecocube.store import LocalStore\n"
        "s = LocalStore(sys.argv[1])\n"
        "orig = shutil.copyfile\n"
        "def slow(a, b, **kw):\n"
        "    with open(a, 'rb') as f, open(b, 'wb') as g:\n"
        "        g.write(f.read(1 << 20)); g.flush(); print('writing', flush=True); time.sleep(60)\n"
        "shutil.copyfile = slow\n"
        "s.put_file(sys.argv[2], 'a/big.bin')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(root), str(big)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait(timeout=10)
    store = LocalStore(root)
    assert store.list("") == []
    assert not (root / "a" / "big.bin").exists()
    leftovers = list((root / LOCAL_TMP_DIR).iterdir())
    assert len(leftovers) == 1 and f".{socket.gethostname()}.{proc.pid}." in leftovers[0].name
    assert store.cleanup_stale() == 1
    assert list((root / LOCAL_TMP_DIR).iterdir()) == []


def test_local_cleanup_spares_live_processes(tmp_path):
    store = LocalStore(tmp_path)
    mine = store.work_dir("X0000_Y0000")
    assert mine.is_dir() and mine.parent == tmp_path / LOCAL_TMP_DIR
    assert store.cleanup_stale() == 0
    assert mine.is_dir()
    assert store.list("") == []  # temporary files are never listed as objects
