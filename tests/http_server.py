"""A real HTTP server on 127.0.0.1 for tests: serves a directory, honours Range, injects faults.

    from http_server import Fault, LocalHTTPServer

    with LocalHTTPServer(tmp_path / "www") as srv:
        srv.add_faults("/data.bin", Fault(drop_after=1000), Fault(status=500))
        download(srv.url("/data.bin"), tmp_path / "data.bin")
        assert srv.requests[1].headers.get("Range") == "bytes=1000-"

Range requests honour ``If-Range`` (compared with the ETag, the MD5 of the content).
Each request for a path consumes that path's next queued :class:`Fault` (none queued: a normal answer).
Every request is logged (method, path, headers, status, body bytes actually sent) in ``srv.requests``;
POST requests (webhook tests) are answered 200 and logged with the body they sent.
"""
from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["Fault", "LoggedRequest", "LocalHTTPServer"]

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class Fault:
    """What to do wrong for one request (fields combine; unset fields mean normal behaviour)."""

    status: int | None = None          # answer this status with an empty body
    drop_after: int | None = None      # announce the full length, send this many body bytes, close
    stall_s: float | None = None       # sleep this long after ``stall_after`` body bytes
    stall_after: int = 0
    trickle_s: float | None = None     # after ``stall_after`` body bytes, send one byte per this many seconds
    ignore_range: bool = False         # answer 200 with the whole file even when a Range was sent
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers
    no_validators: bool = False        # send no ETag, Last-Modified or Content-Length (the body ends at close)


@dataclass
class LoggedRequest:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0
    bytes_sent: int = 0
    body: bytes = b""                  # what a POST sent (webhook tests)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_POST(self) -> None:
        """Log the body and answer 200 (or the queued fault's status): a webhook receiver."""
        path = unquote(urlsplit(self.path).path)
        entry = LoggedRequest("POST", path, dict(self.headers.items()),
                              body=self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.server.owner._log(entry)
        fault = self.server.owner._next_fault(path) or Fault()
        self._empty(entry, fault.status or 200, fault.headers)

    def _serve(self, *, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        entry = LoggedRequest(self.command, path, dict(self.headers.items()))
        self.server.owner._log(entry)
        fault = self.server.owner._next_fault(path) or Fault()
        try:
            if fault.status is not None:
                return self._empty(entry, fault.status, fault.headers)
            data = self.server.owner._read(path)
            if data is None:
                return self._empty(entry, 404, {})
            status, start, chunk, extra = self._select(data, fault)
            if status == 416:
                return self._empty(entry, 416, {"Content-Range": f"bytes */{len(data)}"})
            if fault.no_validators:
                self._head(entry, status, None, {**extra, **fault.headers})
                self.close_connection = True
            else:
                self._head(entry, status, len(chunk), {**extra, **fault.headers, "ETag": _etag(data)})
            if body:
                self._body(entry, chunk, fault)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (stall tests); nothing to do

    def _select(self, data: bytes, fault: Fault) -> tuple[int, int, bytes, dict[str, str]]:
        m = _RANGE.match(self.headers.get("Range", ""))
        if_range = self.headers.get("If-Range")
        if m is None or fault.ignore_range or (if_range is not None and if_range != _etag(data)):
            return 200, 0, data, {}
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else len(data) - 1
        if start >= len(data):
            return 416, 0, b"", {}
        end = min(end, len(data) - 1)
        return 206, start, data[start:end + 1], {"Content-Range": f"bytes {start}-{end}/{len(data)}"}

    def _empty(self, entry: LoggedRequest, status: int, headers: dict[str, str]) -> None:
        self._head(entry, status, 0, headers)

    def _head(self, entry: LoggedRequest, status: int, length: int | None, headers: dict[str, str]) -> None:
        entry.status = status
        self.send_response(status)
        if length is not None:  # None: no validators at all (no length, no Last-Modified)
            self.send_header("Content-Length", str(length))
            self.send_header("Last-Modified", formatdate(0, usegmt=True))
        self.send_header("Accept-Ranges", "bytes")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _body(self, entry: LoggedRequest, chunk: bytes, fault: Fault) -> None:
        limit = len(chunk) if fault.drop_after is None else min(fault.drop_after, len(chunk))
        if fault.trickle_s is not None:
            first = min(fault.stall_after, limit)
            self._write(entry, chunk[:first])
            for i in range(first, limit):
                time.sleep(fault.trickle_s)
                self._write(entry, chunk[i:i + 1])
        elif fault.stall_s is not None:
            first = min(fault.stall_after, limit)
            self._write(entry, chunk[:first])
            time.sleep(fault.stall_s)
            self._write(entry, chunk[first:limit])
        else:
            self._write(entry, chunk[:limit])
        if limit < len(chunk):
            self.close_connection = True

    def _write(self, entry: LoggedRequest, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()
        entry.bytes_sent += len(data)


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: LocalHTTPServer

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up mid-body are expected here


class LocalHTTPServer:
    """Serve ``root`` on 127.0.0.1 (a free port) from a background thread; use as a context manager."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list[LoggedRequest] = []
        self._faults: dict[str, deque[Fault]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="test-http", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str = "/", *, userinfo: str = "") -> str:
        """``http://127.0.0.1:<port><path>``; ``userinfo`` ("user:pass") is put before the host."""
        at = f"{userinfo}@" if userinfo else ""
        return f"http://{at}127.0.0.1:{self.port}/{path.lstrip('/')}"

    def put(self, path: str, data: bytes) -> Path:
        """Write a file the server will serve at ``path``."""
        p = self.root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return p

    def add_faults(self, path: str, *faults: Fault) -> None:
        with self._lock:
            self._faults["/" + path.lstrip("/")].extend(faults)

    def requests_for(self, path: str) -> list[LoggedRequest]:
        return [r for r in self.requests if r.path == "/" + path.lstrip("/")]

    def bytes_sent(self, path: str) -> int:
        return sum(r.bytes_sent for r in self.requests_for(path))

    def _log(self, entry: LoggedRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def _next_fault(self, path: str) -> Fault | None:
        with self._lock:
            queue = self._faults.get(path)
            return queue.popleft() if queue else None

    def _read(self, path: str) -> bytes | None:
        p = (self.root / path.lstrip("/")).resolve()
        if self.root.resolve() not in p.parents or not p.is_file():
            return None
        return p.read_bytes()

    def start(self) -> LocalHTTPServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> LocalHTTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
