"""Common behaviour of binary adapters: argv lists only (never a shell), logging, clear errors.

An adapter subclass sets ``name`` and knows how to find its binary and read its version; ``run`` logs
the argv, streams nothing through a shell, and raises :class:`ToolError` with the command, the exit
code and the tail of stderr when the binary is missing or fails.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
from collections import deque
from pathlib import Path

from pipeline_lib.errors import ToolError

__all__ = ["BinaryTool"]

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 30


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class BinaryTool:
    """Run one external binary by argv list. Subclasses define ``name`` and ``_find_default``."""

    name: str = "tool"

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
        with open(log_file, "a") if log_file else contextlib.nullcontext() as logfh:
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
            proc.wait()
        if proc.returncode != 0:
            how = f"was killed by {_signal_name(-proc.returncode)}" if proc.returncode < 0 else "failed"
            raise ToolError(f"{self.name} {how}", argv=argv, returncode=proc.returncode,
                            stderr_tail="\n".join(tail))
        return stdout
