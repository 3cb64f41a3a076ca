"""Progress reporting for long work (downloads, ingest, tool runs): counts, rate and ETA, throttled.

    with Progress("download uniref50.fasta.gz", total=size, unit="B") as p:
        p.update(len(chunk))

Lines go to the ``pipeline_lib.progress`` logger (Prefect's task logger picks them up in tasks).
Callers up the stack (the tasks layer: Prefect progress artifacts) can follow every Progress made in their
context with ``with listen(fn): ...``; ``fn(progress, finished)`` runs at each throttled line and at the end.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator

__all__ = ["Progress", "human_bytes", "human_count", "listen"]

log = logging.getLogger("pipeline_lib.progress")
Listener = Callable[["Progress", bool], None]
_listeners: contextvars.ContextVar[tuple[Listener, ...]] = contextvars.ContextVar("plm_progress", default=())


@contextlib.contextmanager
def listen(fn: Listener) -> Iterator[None]:
    """Call ``fn(progress, finished)`` for the Progress objects created in this context (thread / task)."""
    token = _listeners.set(_listeners.get() + (fn,))
    try:
        yield
    finally:
        _listeners.reset(token)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def human_count(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}G"


class Progress:
    """Throttled progress lines: done/total, rate, ETA. ``sink`` receives each formatted line."""

    def __init__(self, label: str, *, total: float | None = None, unit: str = "records", done: float = 0,
                 every_s: float = 5.0, sink: Callable[[str], None] | None = None, notify: bool = True) -> None:
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.start_done = self.done = done
        self.sink = sink or log.info
        self.t0 = self._last = time.monotonic()
        # notify=False: no listener hears this one (thousands of small transfers would each get a UI artifact)
        self._listeners = _listeners.get() if notify else ()

    def _notify(self, finished: bool) -> None:
        for fn in self._listeners:
            try:
                fn(self, finished)
            except Exception as exc:  # a progress display must never fail the work it reports on
                log.debug("progress listener failed: %s", exc)

    def _fmt(self, n: float) -> str:
        return human_bytes(n) if self.unit == "B" else f"{human_count(n)} {self.unit}"

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        parts = [f"{self.label}: {self._fmt(self.done)}"]
        if self.total:
            parts[0] += f" / {self._fmt(self.total)} ({100 * self.done / self.total:.1f}%)"
        parts.append(f"{self._fmt(rate)}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {max(self.total - self.done, 0) / rate:.0f}s")
        return ", ".join(parts)

    def update(self, n: float = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.sink(self.line())
            self._notify(False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.sink(self.line() + f", done in {time.monotonic() - self.t0:.1f}s")
            self._notify(True)
