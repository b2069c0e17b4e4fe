"""Blocking calls in worker threads that cancellation can interrupt, and always joins.

``trio.to_thread.run_sync`` offers two ways to cancel a blocking call: abandon the
thread (it runs on, unowned, until the call returns by itself) or wait for it (the
cancellation waits as long as the call blocks). A server wants a third: *make* the call
return -- write to a wake-up fd that a ``select()`` watches, ``shutdown()`` the socket a
``recv()`` blocks on -- and then wait for the thread, which now returns at once. That is
:func:`run_sync_interruptible`: the thread always finishes before the task goes on, so a
scope that was cancelled owns no running thread when it exits.

The threads come from trio's thread cache (``trio.lowlevel.start_thread_soon``): once a
call returns, its thread goes back to the cache as an idle "Trio thread N" and exits by
itself after a few idle seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import outcome
import trio

T = TypeVar("T")


async def run_sync_interruptible(
    fn: Callable[[], T], interrupt: Callable[[], object], *, name: str | None = None
) -> T:
    """Run ``fn()`` in a worker thread; on cancellation call ``interrupt()`` and join.

    ``interrupt`` runs in the trio thread, at most once, when the calling task is
    cancelled while ``fn`` runs; it must make ``fn`` return soon (and must not block).
    The task then waits for ``fn`` to return, discards its result and raises
    :exc:`trio.Cancelled`. Otherwise returns what ``fn`` returned, or raises what it
    raised. ``name`` names the thread while ``fn`` runs (for debuggers and ``ps``).
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()
    interrupted = False

    def deliver(result: outcome.Outcome[T]) -> None:
        # Runs in the worker thread: hand the result to the trio thread.
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            interrupt()
        # FAILED: we stay asleep until deliver() reschedules us, so the thread is
        # always finished when this task runs again.
        return trio.lowlevel.Abort.FAILED

    trio.lowlevel.start_thread_soon(fn, deliver, name=name)
    try:
        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
    except Exception:
        # What fn raised because we interrupted it (EPIPE after a shutdown, say) is
        # not news: the caller was cancelled, and learns that instead.
        if interrupted:
            await trio.lowlevel.checkpoint_if_cancelled()
        raise
    if interrupted:
        # The scope is still cancelled: this raises Cancelled, as the caller expects.
        await trio.lowlevel.checkpoint_if_cancelled()
    return result
