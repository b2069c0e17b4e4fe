"""Small helpers shared by the bench reports: medians, ratios, formatting, progress."""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

__all__ = ["fmt", "median", "progress", "ratio", "spread"]


def median(values: Sequence[float | None]) -> float | None:
    """Median of the known values; None when none is known."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def spread(values: Sequence[float | None]) -> float | None:
    """(max - min) / median of the known values: how much repeated runs disagree."""
    known = [v for v in values if v is not None]
    if len(known) < 2:
        return None
    middle = statistics.median(known)
    return (max(known) - min(known)) / middle if middle else None


def ratio(candidate: float | None, baseline: float | None) -> float | None:
    """candidate / baseline, or None when either is unknown or the baseline is zero."""
    return None if candidate is None or not baseline else candidate / baseline


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    """Format a figure, or '-' when it is unknown."""
    return "-" if value is None else format(value, spec) + suffix


_BAR_WIDTH = 30
_TICK = 0.2  # seconds between redraws


@contextmanager
def progress(
    label: str, seconds: float, *, stream: TextIO | None = None, enabled: bool | None = None
) -> Iterator[None]:
    """Draw a progress bar on ``stream`` (stderr) for a blocking call of about ``seconds``.

    By default the bar is drawn only when both stdout and the stream are terminals
    (piped or ``--json`` output gets none); ``enabled`` overrides that. A thread draws
    it; the thread is stopped and joined on exit, whatever happened inside, and the
    bar's line is cleared.
    """
    out = sys.stderr if stream is None else stream
    if enabled is None:
        enabled = sys.stdout.isatty() and out.isatty()
    if not enabled:
        yield
        return
    done = threading.Event()
    started = time.monotonic()

    def draw() -> None:
        while not done.wait(_TICK):
            fraction = min(1.0, (time.monotonic() - started) / seconds) if seconds > 0 else 1.0
            filled = int(fraction * _BAR_WIDTH)
            bar = "#" * filled + "." * (_BAR_WIDTH - filled)
            out.write(f"\r{label} [{bar}] {fraction:4.0%}")
            out.flush()

    thread = threading.Thread(target=draw, name="triosrv bench progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        out.write("\r" + " " * (len(label) + _BAR_WIDTH + 8) + "\r")
        out.flush()


def cpu_us_per_round_trip(cpu_share: float | None, rtps: float | None) -> float | None:
    """A server's CPU microseconds per round trip: its CPU share over a run (CPU seconds
    / wall seconds) divided by the round trips per second measured in that run. The one
    formula of the bench tools: the cost, whoever was the bottleneck (when the load
    generator is, rates hide it). None when either figure is missing or zero."""
    if not rtps or cpu_share is None:
        return None
    return cpu_share * 1e6 / rtps
