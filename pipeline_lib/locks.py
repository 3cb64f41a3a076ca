"""Inter-process file locks (``fcntl.flock``) that serialize work on one path, with a clear wait message.

    from pipeline_lib.locks import FileLock

    with FileLock(stage_dir.with_name(stage_dir.name + ".lock"), sink=log.info):
        ...  # check the cache, compute, rename: no other process does the same meanwhile

While it waits, the lock reports ``waiting for lock <path> held by pid N on HOST since T (Ns so far)``
at once and then every ``report_every_s``; with ``timeout_s`` it gives up with :class:`LockTimeout`
(a :class:`TransientError`, so Prefect may retry). The lock belongs to the kernel: it is released when
its holder exits or is killed (SIGKILL included), so a crashed run never leaves a stale lock behind.
The file itself stays (unlinking it would let two processes lock two different inodes); its content,
the holder's pid, host and start time, only feeds the wait message.

``flock`` locks are per open file: two threads that each open their own ``FileLock`` exclude each other
as two processes do. They are local to one kernel: on NFS keep the workdir on node-local disk or take
an external lock. Tests: ``.venv/bin/pytest -q tests/test_reliability_locks.py``.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline_lib.errors import TransientError

__all__ = ["FileLock", "LockTimeout", "file_lock", "lock_holder"]

log = logging.getLogger(__name__)


class LockTimeout(TransientError):
    """A lock was not acquired within its timeout. Names the path and the holder."""

    def __init__(self, path: Path, waited_s: float, holder: dict[str, Any] | None):
        self.path, self.waited_s, self.holder = path, waited_s, holder
        super().__init__(f"gave up waiting for lock {path} after {waited_s:.1f}s: held by {_describe(holder)}")

    def __reduce__(self):  # pickled with its arguments: Dask task runners send errors back that way
        return type(self), (self.path, self.waited_s, self.holder), self.__dict__  # state: lineage kept by workers


def lock_holder(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What the current (or last) holder wrote into the lock file: pid, host, since; None if unknown."""
    try:
        info = json.loads(Path(path).read_text() or "null")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder or "pid" not in holder:
        return "another process (holder unknown)"
    text = f"pid {holder['pid']}"
    if holder.get("host"):
        text += f" on {holder['host']}"
    if holder.get("since"):
        text += f" since {holder['since']}"
    return text


class FileLock:
    """An exclusive ``flock`` on ``path`` (created if missing). Not reentrant; use one per acquisition.

    ``timeout_s``: None waits for ever, 0 tries once. ``sink`` receives the wait messages
    (default: this module's logger at WARNING). ``note`` is stored beside the pid for the message.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout_s: float | None = None, poll_s: float = 0.05,
                 report_every_s: float = 30.0, sink: Callable[[str], None] | None = None, note: str = "") -> None:
        self.path = Path(path)
        self.timeout_s, self.poll_s, self.report_every_s = timeout_s, poll_s, report_every_s
        self.sink = sink or log.warning
        self.note = note
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FileLock:
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this FileLock (not reentrant)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        next_report = t0
        delay = self.poll_s
        while True:
            fd = self._try_lock()
            if fd is not None:
                self._fd = fd
                self._write_holder()
                waited = time.monotonic() - t0
                if waited >= self.poll_s:
                    self.sink(f"acquired lock {self.path} after waiting {waited:.1f}s")
                return self
            now = time.monotonic()
            waited = now - t0
            if self.timeout_s is not None and waited >= self.timeout_s:
                raise LockTimeout(self.path, waited, lock_holder(self.path))
            if now >= next_report:
                self.sink(f"waiting for lock {self.path} held by {_describe(lock_holder(self.path))} "
                          f"({waited:.0f}s so far)")
                next_report = now + self.report_every_s
            sleep = delay if self.timeout_s is None else min(delay, max(self.timeout_s - waited, 0.0))
            time.sleep(sleep)
            delay = min(delay * 2, 1.0)

    def _try_lock(self) -> int | None:
        """An fd holding the lock on the inode now at ``path``, or None while another process holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        try:  # the file was replaced or removed between open and flock: lock the new one instead
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return self._try_lock()
        return fd

    def _write_holder(self) -> None:
        assert self._fd is not None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.now(UTC).isoformat(timespec="seconds"), "note": self.note}
        data = json.dumps(info).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no holder any more; the next one writes itself in
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], **kwargs: Any) -> Iterator[FileLock]:
    """``with file_lock(path, timeout_s=60): ...`` (keywords as :class:`FileLock`)."""
    lock = FileLock(path, **kwargs)
    with lock:
        yield lock
