"""An in-process HTTP server with Range support and fault injection, for read tests.

``http.server`` ignores ``Range``; GDAL's ``/vsicurl/`` refuses such servers. This small
threaded server honours single byte ranges (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``),
answers ``HEAD``, counts requests and body bytes per path, and injects faults on demand::

    with RangeServer(folder) as srv:
        srv.add_fault("S2L2A_20190101_10m.tif", "500", times=2)   # two 500s, then normal
        srv.add_fault("SCL", "404")                               # every matching path, forever
        url = srv.url + "/S2L2A_20190101_10m.tif"

Fault kinds: ``"500"``/``"503"``/``"404"``/``"403"`` (that status), ``"stall"`` (sleep
``seconds`` before answering, long enough to trip a client timeout), ``"truncate"``
(headers promise the full range, half of the body is sent, the connection is closed),
``"reset"`` (the connection is closed with a TCP RST, no response). A fault matches when
its ``pattern`` is a substring of the request path; ``times=None`` makes it persistent;
``skip`` lets that many matching requests through before the fault starts (to hit a read
after the open).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

FAULT_KINDS = ("500", "503", "404", "403", "stall", "truncate", "reset")


@dataclass
class Fault:
    pattern: str
    kind: str
    times: int | None = None
    skip: int = 0
    seconds: float = 5.0
    methods: tuple[str, ...] = ("GET", "HEAD")
    fired: int = 0

    def take(self, path: str, method: str) -> bool:
        """Whether this fault fires for this request (updates its counters)."""
        if self.pattern not in path or method not in self.methods:
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True


@dataclass
class RequestLog:
    method: str
    path: str
    range: str | None
    status: int
    body_bytes: int


@dataclass
class _State:
    root: Path
    faults: list[Fault] = field(default_factory=list)
    log: list[RequestLog] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) for a single ``bytes=`` range, None if unsatisfiable/unsupported."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    if first == "":
        n = int(last)
        if n <= 0:
            return None
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ecocube-rangeserver/1"
    state: _State  # set on the subclass per server

    def log_message(self, fmt, *args):  # quiet
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    # ------------------------------------------------------------------
    def _record(self, status: int, body: int) -> None:
        with self.state.lock:
            self.state.log.append(RequestLog(self.command, self._path, self.headers.get("Range"), status, body))

    def _fault(self) -> Fault | None:
        with self.state.lock:
            for fault in self.state.faults:
                if fault.take(self._path, self.command):
                    return fault
        return None

    def _send_status(self, status: int) -> None:
        body = f"{status} injected\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._record(status, len(body))

    def _reset(self) -> None:
        # SO_LINGER with timeout 0 makes close() send RST instead of FIN
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._record(0, 0)
        self.close_connection = True
        try:
            self.connection.close()
        except OSError:
            pass

    def _serve(self, head: bool) -> None:
        self._path = unquote(urlsplit(self.path).path)
        fault = self._fault()
        if fault is not None:
            if fault.kind in ("500", "503", "404", "403"):
                return self._send_status(int(fault.kind))
            if fault.kind == "reset":
                return self._reset()
            if fault.kind == "stall":
                time.sleep(fault.seconds)
        root = self.state.root.resolve()
        target = (root / self._path.lstrip("/")).resolve()
        if root not in target.parents or not target.is_file():
            return self._send_status(404)
        size = target.stat().st_size
        rng = self.headers.get("Range")
        if rng:
            span = _parse_range(rng, size)
            if span is None:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                self._record(416, 0)
                return
            start, end = span
            status = 206
        else:
            start, end, status = 0, size - 1, 200
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            self._record(status, 0)
            return
        with open(target, "rb") as fh:
            fh.seek(start)
            body = fh.read(length)
        if fault is not None and fault.kind == "truncate":
            sent = body[: max(1, len(body) // 2)]
            self.wfile.write(sent)
            self.wfile.flush()
            self._record(status, len(sent))
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)
        self._record(status, len(body))


class RangeServer:
    """Serve ``root`` on 127.0.0.1 (a free port, or ``port``: a server coming back where a
    stopped one was) with Range support and injectable faults."""

    def __init__(self, root: str | os.PathLike, port: int = 0):
        self.state = _State(Path(root))
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_fault(self, pattern: str, kind: str, *, times: int | None = None, skip: int = 0,
                  seconds: float = 5.0, methods: tuple[str, ...] = ("GET", "HEAD")) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; use one of {FAULT_KINDS}")
        fault = Fault(pattern, kind, times=times, skip=skip, seconds=seconds, methods=methods)
        with self.state.lock:
            self.state.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.state.lock:
            self.state.faults.clear()

    @property
    def log(self) -> list[RequestLog]:
        with self.state.lock:
            return list(self.state.log)

    def reset_log(self) -> None:
        with self.state.lock:
            self.state.log.clear()

    @property
    def requests(self) -> int:
        return len(self.log)

    @property
    def bytes_sent(self) -> int:
        return sum(r.body_bytes for r in self.log)

    def start(self) -> RangeServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="rangeserver", daemon=True)
        self._thread.start()
        return self

    def go_away(self) -> None:
        """Stop as a crashed server would: requests on open keep-alive connections are reset,
        new connections are refused."""
        with self.state.lock:
            self.state.faults[:] = [Fault("/", "reset")]
        self.stop()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> RangeServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
