"""The blocking-call detector: a trio Instrument that times every task step.

A trio task runs without interruption from one checkpoint to the next (one "step");
while it does, no other task runs -- no accept, no other connection, no timeout. A
handler that calls ``time.sleep``, a synchronous database driver or a CPU-heavy
function holds the whole server for that long. trio calls an instrument's
``before_task_step`` and ``after_task_step`` around every step, so timing them with
``time.perf_counter`` (real time: the point is the wall clock the peers see, even
under a mock trio clock) finds the step that blocked and the task that ran it. The
task's name says which connection and peer it served (``triosrv connection 7 from
127.0.0.1:50112``); the log line also says where the task then awaited, which is
right after the code that blocked.

The cost is two ``perf_counter`` calls and a subtraction per step, so it is off
unless asked for (``ServerConfig(warn_blocking=0.1)``, ``--warn-blocking 0.1``).
It watches every task of the trio run it is installed in, not only the server's:
any task that holds the event loop stalls the server.
"""

from __future__ import annotations

import logging
import os
import time

import trio

# trio's own frames say nothing about the application: skip them.
_TRIO_DIR = os.path.dirname(trio.__file__) + os.sep


def awaiting_location(task: trio.lowlevel.Task, depth: int = 3) -> str | None:
    """Where ``task`` is suspended: the innermost ``depth`` frames outside trio
    itself, outermost first, as ``"handle (app.py:12) > receive_some (_connection.py:250)"``;
    None for a task that is not suspended in a coroutine."""
    frames = [
        f"{frame.f_code.co_name} ({os.path.basename(frame.f_code.co_filename)}:{lineno})"
        for frame, lineno in task.iter_await_frames()
        if not frame.f_code.co_filename.startswith(_TRIO_DIR)
    ]
    return " > ".join(frames[-depth:]) or None


logger = logging.getLogger("triosrv")


class BlockingDetector(trio.abc.Instrument):
    """Logs a warning when one task step holds the event loop over ``threshold`` s.

    ``count`` is the number of such steps so far, ``worst`` the longest step seen
    (seconds). Install with ``trio.lowlevel.add_instrument(detector)``; the server
    does that itself when ``ServerConfig.warn_blocking`` is set.
    """

    def __init__(self, threshold: float) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold: expected seconds > 0, got {threshold!r}")
        self.threshold = threshold
        self.count = 0
        self.worst = 0.0
        # None between steps: an instrument added in the middle of a step sees its
        # after_task_step without the before, and must not time it from zero.
        self._started: float | None = None

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        """Note when the step starts (called by trio)."""
        self._started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        """Warn if the step that just ended took too long (called by trio)."""
        started, self._started = self._started, None
        if started is None:
            return
        elapsed = time.perf_counter() - started
        if elapsed <= self.threshold:
            return
        self.count += 1
        self.worst = max(self.worst, elapsed)
        logger.warning(
            "blocking: task %r held the event loop for %.3f s (threshold %g s); %s",
            task.name,
            elapsed,
            self.threshold,
            # after the step the task is suspended just past the code that blocked
            f"it then awaited in {where}" if (where := awaiting_location(task)) else "it ended",
        )
