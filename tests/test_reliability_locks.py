"""pipeline_lib.locks: exclusion between processes and threads, the wait message, timeouts, killed holders.

    .venv/bin/pytest -q tests/test_reliability_locks.py
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pipeline_lib.errors import TransientError
from pipeline_lib.locks import FileLock, LockTimeout, file_lock, lock_holder
from tests.conftest import ROOT

# A holder in another process: takes the lock, says so, keeps it until stdin closes or it is killed.
_HOLDER = """
import sys
from pipeline_lib.locks import FileLock
with FileLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    """Start a process holding ``tmp_path / 'x.lock'``; yields (proc, lock path)."""
    path = tmp_path / "x.lock"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc, path
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_lock_records_holder_and_clears_it_on_release(tmp_path):
    path = tmp_path / "sub" / "a.lock"
    with file_lock(path, note="unit test") as lock:
        assert lock.locked
        info = lock_holder(path)
        assert info["pid"] == os.getpid() and info["note"] == "unit test" and info["host"]
    assert not lock.locked and lock_holder(path) is None and path.exists()


def test_waiter_names_the_holder_pid_then_gets_the_lock(holder):
    proc, path = holder
    messages: list[str] = []
    with pytest.raises(LockTimeout) as err:
        FileLock(path, timeout_s=0.3, sink=messages.append).acquire()
    assert isinstance(err.value, TransientError)
    assert str(path) in str(err.value) and f"pid {proc.pid}" in str(err.value)
    assert messages and messages[0].startswith(f"waiting for lock {path} held by pid {proc.pid}")

    got = threading.Event()

    def wait_for_it():
        with FileLock(path, sink=messages.append):
            got.set()

    t = threading.Thread(target=wait_for_it)
    t.start()
    time.sleep(0.3)
    assert not got.is_set()             # still held by the other process
    proc.stdin.close()                  # the holder releases
    t.join(10)
    assert got.is_set() and any(m.startswith(f"acquired lock {path} after waiting") for m in messages)


def test_sigkilled_holder_leaves_no_stale_lock(holder):
    proc, path = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lock_holder(path)["pid"] == proc.pid  # the file still names it...
    t0 = time.monotonic()
    with FileLock(path, timeout_s=5):            # ...but the kernel released the lock with the process
        pass
    assert time.monotonic() - t0 < 1


def test_threads_with_their_own_locks_exclude_each_other(tmp_path):
    path = tmp_path / "t.lock"
    inside, overlaps = [0], []

    def work():
        for _ in range(20):
            with FileLock(path, poll_s=0.001):
                inside[0] += 1
                overlaps.append(inside[0])
                time.sleep(0.001)
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(overlaps) == 80 and max(overlaps) == 1


def test_timeout_zero_tries_once_and_lock_is_not_reentrant(tmp_path):
    path = tmp_path / "r.lock"
    with FileLock(path) as lock:
        with pytest.raises(RuntimeError, match="not reentrant"):
            lock.acquire()
        t0 = time.monotonic()
        with pytest.raises(LockTimeout):
            FileLock(path, timeout_s=0, sink=lambda _m: None).acquire()
        assert time.monotonic() - t0 < 0.5


def test_lock_file_replaced_while_waiting_is_followed(tmp_path):
    """Someone deleting the lock file must not make the next locker lock an orphaned inode for ever."""
    path = tmp_path / "d.lock"
    first = FileLock(path).acquire()
    path.unlink()                     # e.g. `rm -rf` of the stage directory by a user
    with FileLock(path, timeout_s=1) as second:
        assert os.stat(path).st_ino == os.fstat(second._fd).st_ino
    first.release()
