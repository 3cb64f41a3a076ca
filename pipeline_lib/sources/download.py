"""Resumable, verified HTTP downloads: ``dest.partial`` + Range resume, retries, MD5/size check, atomic rename.

    from pipeline_lib.sources.download import download
    result = download("https://ftp.uniprot.org/.../uniref50.fasta.gz", "downloads/uniref50.fasta.gz",
                      expected_size=..., expected_md5=...)

How it behaves:

- ``dest`` already present (and matching ``expected_size``/``expected_md5`` when given): nothing is fetched.
- Bytes stream (1 MiB chunks) into ``dest.partial``; a retry, or a later run, resumes it with
  ``Range: bytes=N-`` (206 appends; 200 means the server ignored the range, so it restarts from 0).
- Transient failures (connection errors, 408/429/5xx, no byte for ``timeout_s``, fewer than ``min_bytes``
  in a ``timeout_s`` window, short reads) are retried with exponential backoff; after the last attempt
  :class:`DownloadError` (a TransientError, marked ``retries_exhausted``) is raised; ``deadline_s`` ends the
  whole call. Other 4xx and refused URLs raise :class:`PermanentDownloadError`, which is never retried.
- MD5 and SHA-256 are computed while streaming (a resumed partial is hashed first); a mismatch raises
  :class:`ChecksumError` and moves the file aside as ``dest.corrupt``; a good file is renamed into place.
- URLs in logs and errors go through :func:`redact_url` (no user:password, no token-like query values);
  the scheme / host policy and the redirect check live in :mod:`pipeline_lib.sources.urls`.

Tests: ``.venv/bin/pytest -q tests/test_download.py``.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests
import urllib3

from pipeline_lib.errors import ChecksumError, DownloadError
from pipeline_lib.io import write_json_atomic
from pipeline_lib.progress import Progress
from pipeline_lib.sources.urls import (
    PermanentDownloadError,
    check_url_allowed,
    redact_url,
    redirect_guard,
    scrub_credentials,
    url_policy,
)

__all__ = [
    "DownloadResult", "HeadInfo", "PermanentDownloadError",
    "download", "fetch_bytes", "head", "redact_url", "check_url_allowed", "validators_path",
]

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MAX_BACKOFF_S = 60.0
_RETRY_STATUS = frozenset({408, 429})
T = TypeVar("T")


class _Transient(Exception):
    """Internal: one attempt failed in a way worth retrying (message is already redacted)."""


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    url: str          # redacted
    bytes: int
    md5: str
    sha256: str
    attempts: int     # HTTP attempts made (0 when skipped)
    resumed: bool     # some bytes came from an earlier partial transfer
    skipped: bool     # dest was already present and valid; nothing was fetched
    refreshed: str | None = None   # why a copy that was present was downloaded again (revalidate)


@dataclass(frozen=True)
class HeadInfo:
    url: str          # redacted, after redirects
    size: int | None
    etag: str | None
    last_modified: str | None
    accept_ranges: bool


# --- retries ---------------------------------------------------------------------------------------

def _with_retries(fn: Callable[[int], T], *, url: str, retries: int, backoff_s: float) -> T:
    """Call ``fn(attempt)`` until it returns; retry on :class:`_Transient` with exponential backoff."""
    for attempt in range(retries + 1):
        try:
            return fn(attempt)
        except _Transient as exc:
            if attempt >= retries:
                err = DownloadError(f"{redact_url(url)}: giving up after {attempt + 1} attempts: {exc}")
                err.retries_exhausted = True
                raise err from None
            delay = min(backoff_s * 2 ** attempt, MAX_BACKOFF_S)
            log.warning("%s: attempt %d/%d failed (%s); retrying in %.1fs",
                        redact_url(url), attempt + 1, retries + 1, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


_NETWORK_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


def _session() -> requests.Session:
    s = requests.Session()
    # Byte ranges and checksums refer to the stored bytes: never let the server re-encode them.
    s.headers["Accept-Encoding"] = "identity"
    return s


def _request(session: requests.Session, method: str, url: str, *, headers: dict[str, str], timeout_s: float,
             allowed_schemes: Iterable[str], allowed_hosts: Iterable[str] | None) -> requests.Response:
    """One request; network errors become :class:`_Transient`, refused statuses raise at once. Every redirect
    target is checked against the URL policy before it is requested."""
    try:
        resp = session.request(method, url, headers=headers, stream=True, timeout=(timeout_s, timeout_s),
                               hooks={"response": redirect_guard(allowed_schemes, allowed_hosts)})
    except _NETWORK_ERRORS as exc:
        raise _Transient(scrub_credentials(f"{type(exc).__name__}: {exc}", url)) from None
    try:
        check_url_allowed(resp.url, allowed_schemes, allowed_hosts)  # where the redirects ended
    except PermanentDownloadError:
        resp.close()
        raise
    status = resp.status_code
    if status >= 500 or status in _RETRY_STATUS:
        resp.close()
        raise _Transient(f"HTTP {status} {resp.reason}")
    if status >= 400 and status != 416:
        resp.close()
        raise PermanentDownloadError(f"{redact_url(url)}: HTTP {status} {resp.reason}",
                                     url=redact_url(url), status=status)
    return resp


def _read_raw(resp: requests.Response, url: str) -> bytes:
    """The next bytes of the body as stored (no content decoding), as soon as some arrive (``read1``: a
    ``read(CHUNK)`` would wait for the whole MiB, and a server sending a byte now and then would never time
    out); network errors are transient."""
    try:
        return resp.raw.read1(CHUNK, decode_content=False)
    except _NETWORK_ERRORS as exc:
        raise _Transient(scrub_credentials(f"{type(exc).__name__}: {exc}", url)) from None


class _StallWatch:
    """Fewer than ``min_bytes`` in a ``timeout_s`` window is a stall (a server trickling a byte now and then
    never trips the per-read timeout): :meth:`got` raises :class:`_Transient` on one."""

    def __init__(self, timeout_s: float, min_bytes: int) -> None:
        self.timeout_s, self.min_bytes = timeout_s, min_bytes
        self.start, self.bytes = time.monotonic(), 0

    def got(self, n: int, received: int) -> None:
        """``n`` more bytes arrived (``received`` in all, for the message)."""
        self.bytes += n
        now = time.monotonic()
        if now - self.start >= self.timeout_s:
            if self.bytes < self.min_bytes:
                raise _Transient(f"stalled: {self.bytes} bytes in {now - self.start:.1f} s, under "
                                 f"min_bytes={self.min_bytes} per timeout_s={self.timeout_s:g} "
                                 f"({received} bytes received)")
            self.start, self.bytes = now, 0


def _validators_of(resp: requests.Response) -> dict[str, str | None]:
    """The ETag and Last-Modified a response came with (what a later run compares with a HEAD request)."""
    return {"etag": resp.headers.get("ETag"), "last_modified": resp.headers.get("Last-Modified")}


# --- hashing ---------------------------------------------------------------------------------------

class _Hashes:
    """MD5 + SHA-256 of the bytes written so far to the partial file."""

    def __init__(self) -> None:
        self.md5, self.sha256, self.n = hashlib.md5(), hashlib.sha256(), 0

    def update(self, block: bytes) -> None:
        self.md5.update(block)
        self.sha256.update(block)
        self.n += len(block)

    @classmethod
    def of_file(cls, path: Path) -> _Hashes:
        h = cls()
        if path.exists():
            with open(path, "rb") as fh:
                while block := fh.read(CHUNK):
                    h.update(block)
        return h


# --- download --------------------------------------------------------------------------------------

class _Transfer:
    """State of one download across attempts: the partial file and the running hashes."""

    def __init__(self, url: str, dest: Path, expected_size: int | None, timeout_s: float, progress: bool,
                 policy: dict[str, Any], min_bytes: int = 0, deadline_s: float | None = None) -> None:
        self.url, self.dest, self.expected_size = url, dest, expected_size
        self.partial = dest.with_name(dest.name + ".partial")
        # ETag / Last-Modified of the response the partial came from, sent back as If-Range on resume so
        # that a file changed on the server restarts from 0 instead of being spliced onto old bytes.
        self.validator = dest.with_name(dest.name + ".partial.validator")
        self.timeout_s, self.progress, self.policy = timeout_s, progress, policy
        self.min_bytes = min_bytes  # per timeout_s window: less is a stall, however steadily it trickles
        self.deadline = time.monotonic() + deadline_s if deadline_s is not None else None
        self.deadline_s = deadline_s
        self.hashes: _Hashes | None = None
        self.server_validators: dict[str, str | None] = {}   # of the response the bytes came from
        self.attempts, self.resumed = 0, False
        self.session = _session()

    def _reset(self, why: str) -> None:
        if self.partial.exists():
            log.info("%s: restarting from byte 0 (%s)", redact_url(self.url), why)
        self.partial.unlink(missing_ok=True)
        self.validator.unlink(missing_ok=True)
        self.hashes = _Hashes()

    def _save_validator(self, resp: requests.Response) -> None:
        self.server_validators = _validators_of(resp)
        etag = resp.headers.get("ETag", "")
        value = etag if etag and not etag.startswith("W/") else resp.headers.get("Last-Modified", "")
        self.validator.parent.mkdir(parents=True, exist_ok=True)
        self.validator.write_text(value) if value else self.validator.unlink(missing_ok=True)

    def _offset(self) -> int:
        """Bytes already in the partial file; re-hash them unless the hashes are already current."""
        size = self.partial.stat().st_size if self.partial.exists() else 0
        if self.expected_size is not None and size > self.expected_size:
            self._reset(f"partial has {size} bytes, more than the expected {self.expected_size}")
            return 0
        if self.hashes is None or self.hashes.n != size:
            self.hashes = _Hashes.of_file(self.partial)
        return size

    def attempt(self, attempt: int) -> None:
        offset = self._offset()
        if self.expected_size is not None and offset == self.expected_size and offset > 0:
            self.resumed = True
            return  # a previous run got every byte; only verification and rename remain
        self.attempts += 1
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        if offset and self.validator.is_file():
            headers["If-Range"] = self.validator.read_text().strip()
        resp = _request(self.session, "GET", self.url, headers=headers, timeout_s=self.timeout_s, **self.policy)
        with resp:
            if resp.status_code == 416:
                return self._range_not_satisfiable(resp, offset)
            if resp.status_code == 206:
                self._check_content_range(resp, offset)
                self.resumed = self.resumed or offset > 0
                self.server_validators = _validators_of(resp)
            else:
                if offset:
                    self._reset("the server ignored the Range request, or the file changed (If-Range)")
                    offset = 0
                self._save_validator(resp)
            length = _content_length(resp)
            self._check_announced_size(offset, length)
            self._stream(resp, offset, length)

    def _range_not_satisfiable(self, resp: requests.Response, offset: int) -> None:
        total_text = resp.headers.get("Content-Range", "").rpartition("/")[2].strip()
        total = int(total_text) if total_text.isdigit() else None
        if offset > 0 and total == offset:
            return  # the partial already holds the whole file
        self._reset(f"HTTP 416 for Range bytes={offset}- (server size {total})")
        raise _Transient("HTTP 416 Range Not Satisfiable; partial discarded")

    def _check_content_range(self, resp: requests.Response, offset: int) -> None:
        start = resp.headers.get("Content-Range", "").removeprefix("bytes ").split("-", 1)[0].strip()
        if start != str(offset):
            self._reset(f"asked for bytes={offset}-, got Content-Range {resp.headers.get('Content-Range')!r}")
            raise _Transient("206 response for the wrong range")

    def _check_announced_size(self, offset: int, length: int | None) -> None:
        if self.expected_size is not None and length is not None and offset + length != self.expected_size:
            raise ChecksumError(f"{redact_url(self.url)}: server announces {offset + length} bytes, "
                                f"expected {self.expected_size} (file {self.dest})")

    def _stream(self, resp: requests.Response, offset: int, length: int | None) -> None:
        assert self.hashes is not None
        total = offset + length if length is not None else self.expected_size
        label = f"download {self.dest.name}"
        sink = None if self.progress else (lambda _line: None)
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        got = 0
        stalls = _StallWatch(self.timeout_s, self.min_bytes)
        with open(self.partial, "ab" if offset else "wb") as fh, \
                Progress(label, total=total, unit="B", done=offset, sink=sink, notify=self.progress) as prog:
            try:
                while block := _read_raw(resp, self.url):
                    fh.write(block)
                    self.hashes.update(block)
                    got += len(block)
                    prog.update(len(block))
                    if self.deadline is not None and time.monotonic() > self.deadline:
                        err = DownloadError(f"{redact_url(self.url)}: not finished within deadline_s="
                                            f"{self.deadline_s:g} ({offset + got} bytes received; a later run "
                                            "resumes)")
                        err.retries_exhausted = True
                        raise err
                    stalls.got(len(block), offset + got)
            finally:  # what arrived is kept for the resume
                fh.flush()
                os.fsync(fh.fileno())
            if length is not None and got < length:  # inside the block: no "done" progress line
                raise _Transient(f"short read: got {got} of {length} bytes")


def _content_length(resp: requests.Response) -> int | None:
    try:
        return int(resp.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _verify(path: Path, n: int, md5: str, expected_size: int | None, expected_md5: str | None) -> str | None:
    """The reason ``path`` fails its expectations, or None."""
    if expected_size is not None and n != expected_size:
        return f"size: expected {expected_size} bytes, got {n}"
    if expected_md5 is not None and md5.lower() != expected_md5.lower():
        return f"md5: expected {expected_md5.lower()}, got {md5}"
    return None


def _existing(dest: Path, url: str, expected_size: int | None, expected_md5: str | None) -> DownloadResult | None:
    """A skipped result when ``dest`` is already there and valid (files only land there verified)."""
    if not dest.is_file() or (expected_size is not None and dest.stat().st_size != expected_size):
        return None
    h = _Hashes.of_file(dest)
    problem = _verify(dest, h.n, h.md5.hexdigest(), expected_size, expected_md5)
    if problem:
        log.warning("%s exists but does not match (%s); downloading again", dest, problem)
        return None
    log.info("%s already present and valid; skipping %s", dest, redact_url(url))
    return DownloadResult(dest, redact_url(url), h.n, h.md5.hexdigest(), h.sha256.hexdigest(), 0, False, True)


def validators_path(dest: Path) -> Path:
    """Where the server's validators of a downloaded file are kept: ``<dest>.validators.json``."""
    return dest.with_name(dest.name + ".validators.json")


def _changed_upstream(url: str, dest: Path, unvalidated: str, **head_kwargs: Any) -> str | None:
    """Why the copy at ``dest`` is out of date, by a HEAD request against the validators recorded with it
    (size, ETag, Last-Modified), or None when it is current."""
    p = validators_path(dest)
    stored = json.loads(p.read_text()) if p.is_file() else None
    info = head(url, **head_kwargs)
    now = {"size": info.size, "etag": info.etag, "last_modified": info.last_modified}
    if all(v is None for v in now.values()):
        return None if unvalidated == "trust" else \
            "the server gives no size, ETag or Last-Modified to compare with (unvalidated: download)"
    if stored is None:
        return "no validators were recorded with the copy here"
    changed = [f"{k} {stored.get(k)!r} -> {v!r}" for k, v in now.items() if v is not None and stored.get(k) != v]
    return "changed upstream: " + ", ".join(changed) if changed else None


def download(url: str, dest: str | os.PathLike[str], *, expected_size: int | None = None,
             expected_md5: str | None = None, retries: int = 5, timeout_s: float = 60.0, backoff_s: float = 1.0,
             allowed_schemes: Iterable[str] = ("http", "https"), allowed_hosts: Iterable[str] | None = None,
             progress: bool = True, min_bytes: int = 1024, deadline_s: float | None = None,
             revalidate: bool = False, unvalidated: str = "download") -> DownloadResult:
    """Fetch ``url`` to ``dest`` (resumable, retried, verified, atomic). See the module docstring.

    A transfer that receives fewer than ``min_bytes`` in any ``timeout_s`` window is stalled (an attempt
    fails and is retried); ``deadline_s`` bounds the whole call. The final error after ``retries`` is marked
    ``retries_exhausted``: the caller's own retry policy (Prefect's task retries) leaves it alone.

    ``revalidate`` (a file without a published checksum): a copy already at ``dest`` is kept only while a HEAD
    request shows the size, ETag and Last-Modified recorded with it (``<dest>.validators.json``); when the
    server gives none of them, ``unvalidated`` says: ``download`` again (the safe default) or ``trust`` it."""
    policy = url_policy(url, allowed_schemes, allowed_hosts)
    dest = Path(dest)
    done = _existing(dest, url, expected_size, expected_md5)
    refreshed = None
    if done is not None and revalidate and expected_md5 is None:
        refreshed = _changed_upstream(url, dest, unvalidated, timeout_s=timeout_s, retries=retries,
                                      backoff_s=backoff_s, allowed_schemes=allowed_schemes,
                                      allowed_hosts=allowed_hosts)
        if refreshed:
            log.info("%s: downloading %s again: %s", dest, redact_url(url), refreshed)
            done = None
    if done is not None:
        return done
    t = _Transfer(url, dest, expected_size, timeout_s, progress, policy, min_bytes, deadline_s)
    try:
        _with_retries(t.attempt, url=url, retries=retries, backoff_s=backoff_s)
    finally:
        t.session.close()  # on failure the partial and its validator stay for the next run to resume
    t.validator.unlink(missing_ok=True)
    h = t.hashes if t.hashes is not None and t.hashes.n == t.partial.stat().st_size else _Hashes.of_file(t.partial)
    md5 = h.md5.hexdigest()
    problem = _verify(t.partial, h.n, md5, expected_size, expected_md5)
    if problem:
        corrupt = dest.with_name(dest.name + ".corrupt")
        os.replace(t.partial, corrupt)
        raise ChecksumError(f"file {dest}: {problem} (downloaded from {redact_url(url)}; kept as {corrupt})")
    os.replace(t.partial, dest)
    write_json_atomic(validators_path(dest), {"size": h.n, **t.server_validators})
    return DownloadResult(dest, redact_url(url), h.n, md5, h.sha256.hexdigest(), t.attempts, t.resumed, False,
                          refreshed)


# --- small fetches ---------------------------------------------------------------------------------

def fetch_bytes(url: str, *, max_bytes: int = 64 << 20, retries: int = 5, timeout_s: float = 60.0,
                backoff_s: float = 1.0, allowed_schemes: Iterable[str] = ("http", "https"),
                allowed_hosts: Iterable[str] | None = None, progress: bool = False,
                min_bytes: int = 1024) -> bytes:
    """The body of a small document (metalink, release note) in memory, with the same retries, policy and
    stall rule (fewer than ``min_bytes`` in a ``timeout_s`` window)."""
    del progress  # accepted so callers can pass download() keyword arguments through
    policy = url_policy(url, allowed_schemes, allowed_hosts)

    def once(_attempt: int) -> bytes:
        with _session() as s:
            resp = _request(s, "GET", url, headers={}, timeout_s=timeout_s, **policy)
            with resp:
                if resp.status_code != 200:
                    raise _Transient(f"unexpected HTTP {resp.status_code} for a plain GET")
                length, body = _content_length(resp), bytearray()
                stalls = _StallWatch(timeout_s, min_bytes)  # a trickle is a stall here too
                while block := _read_raw(resp, url):
                    body += block
                    if len(body) > max_bytes:
                        raise PermanentDownloadError(f"{redact_url(url)}: larger than {max_bytes} bytes",
                                                     url=redact_url(url))
                    stalls.got(len(block), len(body))
                if length is not None and len(body) < length:
                    raise _Transient(f"short read: got {len(body)} of {length} bytes")
                return bytes(body)

    return _with_retries(once, url=url, retries=retries, backoff_s=backoff_s)


def head(url: str, *, timeout_s: float = 30.0, retries: int = 2, backoff_s: float = 1.0,
         allowed_schemes: Iterable[str] = ("http", "https"), allowed_hosts: Iterable[str] | None = None) -> HeadInfo:
    """Size, ETag, Last-Modified and range support of ``url`` from one HEAD request (retried if transient)."""
    policy = url_policy(url, allowed_schemes, allowed_hosts)

    def once(_attempt: int) -> HeadInfo:
        with _session() as s:
            resp = _request(s, "HEAD", url, headers={}, timeout_s=timeout_s, **policy)
            with resp:
                return HeadInfo(redact_url(resp.url), _content_length(resp), resp.headers.get("ETag"),
                                resp.headers.get("Last-Modified"),
                                resp.headers.get("Accept-Ranges", "").lower() == "bytes")

    return _with_retries(once, url=url, retries=retries, backoff_s=backoff_s)
