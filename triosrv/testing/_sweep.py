"""The cancellation sweep: cancel a scenario before each of its scheduling steps in turn.

A server's cleanup paths run only when a cancellation lands at the right moment:
between accept and the connection task's start, in the middle of a handler's send,
during the drain. Waiting for those moments by chance is hopeless, so the sweep makes
them: it runs the scenario once under a trio ``Instrument`` that counts the task steps
it takes (every time one of its tasks resumes), N; then reruns it N times, cancelling
its scope just before step 1, 2, ..., N (a seeded sample of them when N is large).
After each run it checks that nothing but ``trio.Cancelled`` came out -- which the
scope absorbs, so "nothing at all" -- and that no fd, thread or task was left.

The scenario should own everything it starts (the server in a nursery of its own, as
:func:`open_test_server` does), so that cancelling the scenario cancels the server's
scope. Over real sockets the step count varies a little from run to run; each run
records whether the cancellation was reached before the scenario finished.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Awaitable, Callable

import attrs
import trio

from ._leaks import Leaks, Snapshot, leaks_since

Scenario = Callable[[], Awaitable[object]]


class _StepCounter(trio.abc.Instrument):
    """Counts the steps of the tasks under ``nursery``; cancels ``scope`` before one."""

    def __init__(self, nursery: trio.Nursery, scope: trio.CancelScope, at: int | None) -> None:
        self.nursery = nursery
        self.scope = scope
        self.at = at
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        parent = task.parent_nursery
        while parent is not None and parent is not self.nursery:
            parent = parent.parent_task.parent_nursery
        if parent is None:
            return
        self.steps += 1
        if self.steps == self.at:
            self.scope.cancel()


@attrs.frozen(kw_only=True)
class Trial:
    """One run of the scenario: cancelled before ``step`` (0: not cancelled, the count).

    ``reached`` is False when the scenario finished before that step; ``error`` is what
    came out other than Cancelled (a formatted traceback), ``leaks`` what was left.
    """

    step: int
    steps_taken: int
    reached: bool
    error: str | None
    leaks: Leaks

    @property
    def failed(self) -> bool:
        """True when something other than Cancelled came out, or something leaked."""
        return self.error is not None or bool(self.leaks)

    def describe(self) -> str:
        """One paragraph: which step, and what went wrong."""
        where = f"cancelled before step {self.step}" if self.step else "uncancelled run"
        lines = [f"{where}:"]
        if self.error is not None:
            lines.append("  raised " + self.error.strip().replace("\n", "\n  "))
        if self.leaks:
            lines.append("  " + self.leaks.describe().replace("\n", "\n  "))
        return "\n".join(lines)


class SweepError(AssertionError):
    """The sweep found failures; ``report`` has them all, the message the first few."""

    def __init__(self, report: SweepReport) -> None:
        failures = report.failures
        shown = "\n".join(trial.describe() for trial in failures[:5])
        more = f"\n... and {len(failures) - 5} more" if len(failures) > 5 else ""
        super().__init__(
            f"cancellation sweep over {report.steps} steps: {len(failures)} of "
            f"{len(report.trials)} runs failed\n{shown}{more}"
        )
        self.report = report


@attrs.frozen(kw_only=True)
class SweepReport:
    """Every run of a sweep; ``steps`` is the count from the uncancelled run."""

    steps: int
    trials: tuple[Trial, ...]

    @property
    def failures(self) -> tuple[Trial, ...]:
        """The runs that failed."""
        return tuple(trial for trial in self.trials if trial.failed)

    def check(self) -> None:
        """Raise :class:`SweepError` if any run failed."""
        if self.failures:
            raise SweepError(self)


async def _trial(scenario: Scenario, at: int | None, thread_grace: float) -> Trial:
    before = Snapshot.take()
    error: str | None = None
    scope = trio.CancelScope()

    async def run() -> None:
        nonlocal error
        try:
            with scope:
                await scenario()
        except (trio.Cancelled, KeyboardInterrupt, SystemExit):
            raise  # ours was absorbed by the scope: this one belongs to someone else
        except BaseException as exc:  # an error, or a group mixing errors and Cancelled
            error = "".join(traceback.format_exception(exc, limit=-8))

    # The scenario runs in a nursery of its own, so that the counter can tell its
    # steps (every task under that nursery) from everyone else's.
    counter: _StepCounter | None = None
    try:
        async with trio.open_nursery() as nursery:
            counter = _StepCounter(nursery, scope, at)
            trio.lowlevel.add_instrument(counter)
            nursery.start_soon(run, name="triosrv.testing sweep trial")
    finally:
        if counter is not None:
            trio.lowlevel.remove_instrument(counter)
    return Trial(
        step=at or 0,
        steps_taken=counter.steps,
        reached=at is not None and counter.steps >= at,
        error=error,
        leaks=leaks_since(before, thread_grace=thread_grace),
    )


def _steps_to_try(total: int, max_trials: int, seed: int) -> list[int]:
    if total <= max_trials:
        return list(range(1, total + 1))
    sample = random.Random(seed).sample(range(2, total), max(0, max_trials - 2))
    return sorted({1, total, *sample})


async def cancellation_sweep(
    scenario: Scenario,
    *,
    max_trials: int = 200,
    seed: int = 0,
    thread_grace: float = 1.0,
) -> SweepReport:
    """Run ``scenario`` once to count its steps, then once cancelled before each step.

    With more than ``max_trials`` steps, a sample of them chosen from ``seed`` (always
    the first and the last). ``thread_grace`` is how long a new thread may take to
    finish before it counts as leaked. Nothing else in the process should open or close
    fds while it runs. Returns the report; call :meth:`SweepReport.check` to fail a
    test on any failure::

        async def scenario() -> None:
            async with triosrv.testing.open_test_server("echo", check_leaks=False) as s:
                async with await s.connect() as stream:
                    await stream.send_all(b"ping")
                    await stream.receive_some()

        (await triosrv.testing.cancellation_sweep(scenario)).check()
    """
    if max_trials < 1:
        raise ValueError(f"max_trials: expected >= 1, got {max_trials!r}")
    first = await _trial(scenario, None, thread_grace)
    if first.failed:  # it fails without any cancellation: nothing more to learn
        return SweepReport(steps=first.steps_taken, trials=(first,))
    trials = [first]
    for step in _steps_to_try(first.steps_taken, max_trials, seed):
        trials.append(await _trial(scenario, step, thread_grace))
    return SweepReport(steps=first.steps_taken, trials=tuple(trials))
