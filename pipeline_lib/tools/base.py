"""Common behaviour of binary adapters: argv lists only (never a shell), logging, clear errors.

An adapter subclass sets ``name`` and knows how to find its binary and read its version; ``run`` logs
the argv, streams nothing through a shell, and raises :class:`ToolError` with the command, the exit
code and the tail of stderr when the binary is missing or fails. A call that runs longer than
``heartbeat_s`` logs a line every ``heartbeat_s`` seconds with the time so far and the step the tool
reports it is on (``step_of``; MMseqs2 workflows name each module they start), so an hour-long
clustering is not an hour of silence.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from pipeline_lib.errors import ToolError

__all__ = ["BinaryTool"]

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 30
HEARTBEAT_S = 60.0


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


class _Heartbeat:
    """While a tool runs: every ``every_s`` seconds a log line with the time so far and its current step."""

    def __init__(self, label: str, every_s: float) -> None:
        self.label, self.every_s = label, every_s
        self.steps: list[str] = []
        self.returncode: int | None = None
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        # the thread runs in a copy of this context, so Prefect attributes its lines to the running task
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._beat,), daemon=True,
                                        name=f"heartbeat {label}")

    def line(self) -> str:
        where = f"step {len(self.steps)} ({self.steps[-1]})" if self.steps else "no step reported yet"
        return f"{self.label}: running for {_duration(time.monotonic() - self.t0)}, {where}"

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            log.info(self.line())

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        elapsed = time.monotonic() - self.t0
        if elapsed >= self.every_s:  # short calls stay quiet; a long one says how it ended
            how = "finished" if self.returncode == 0 and exc[0] is None else "failed"
            n = len(self.steps)
            log.info("%s: %s after %s, %d step%s", self.label, how, _duration(elapsed), n, "" if n == 1 else "s")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class BinaryTool:
    """Run one external binary by argv list. Subclasses define ``name`` and ``_find_default``."""

    name: str = "tool"
    heartbeat_s: float = HEARTBEAT_S

    def __init__(self, *, binary: str | os.PathLike[str] | None = None, threads: int = 1) -> None:
        self.threads = threads
        self.binary = str(binary) if binary else self._find_default()

    def _find_default(self) -> str:
        found = shutil.which(self.name)
        if not found:
            raise ToolError(f"{self.name} binary not found on PATH; install it or set its path in the config")
        return found

    def check_available(self) -> None:
        if not (Path(self.binary).is_file() and os.access(self.binary, os.X_OK)) and not shutil.which(self.binary):
            raise ToolError(f"{self.name} binary not found or not executable: {self.binary}")

    def version(self) -> str:
        """The tool's own version string (recorded in lineage)."""
        raise NotImplementedError

    def step_of(self, line: str) -> str | None:
        """The name of the step an output line says the tool is starting, or None (no steps known)."""
        return None

    def run(self, *args: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None,
            capture_stdout: bool = False, log_file: str | os.PathLike[str] | None = None) -> str:
        """Run the binary with ``args``; return stdout when ``capture_stdout``.

        stderr and (when not captured) stdout go to ``log_file`` if given; the tail of stderr is kept
        in memory for the error message either way.
        """
        self.check_available()
        argv = [self.binary, *map(str, args)]
        log.info("running: %s", " ".join(argv))
        tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        try:
            # stdout captured for the caller, or merged into the log stream; stderr always read for the tail
            proc = subprocess.Popen(
                argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE if capture_stdout else subprocess.STDOUT, text=True, errors="replace",
            )
        except OSError as exc:
            raise ToolError(f"could not start {self.name}: {exc}", argv=argv) from exc
        label = f"{self.name} {args[0]}" if args else self.name
        with open(log_file, "a") if log_file else contextlib.nullcontext() as logfh, \
                _Heartbeat(label, self.heartbeat_s) as beat:
            lines: Iterable[str]
            if capture_stdout:
                stdout, stream = proc.communicate()
                lines = stream.splitlines(keepends=True)
            else:
                stdout = ""
                assert proc.stdout is not None
                lines = proc.stdout
            for line in lines:
                tail.append(line.rstrip("\n"))
                if logfh:
                    logfh.write(line)
                step = self.step_of(line)
                if step:
                    beat.steps.append(step)
            beat.returncode = proc.wait()
        if proc.returncode != 0:
            how = f"was killed by {_signal_name(-proc.returncode)}" if proc.returncode < 0 else "failed"
            raise ToolError(f"{self.name} {how}", argv=argv, returncode=proc.returncode,
                            stderr_tail="\n".join(tail))
        return stdout
