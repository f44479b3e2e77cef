"""Cancellation that always lands.

Python 3.11's ``asyncio.wait_for`` loses a cancellation that arrives in the same loop iteration
as its inner awaitable completes (CPython gh-86296, fixed in 3.12). pymodbus and asyncua both
await every request through ``wait_for``, so a task cancelled while a meter reply is arriving
can swallow the ``CancelledError`` and poll on forever — a daemon that never stops. The request
stays counted on the task (``Task.cancelling()``), which is what the helpers here rely on.

Our own code never calls ``wait_for``: it uses :func:`wait_event` and ``asyncio.timeout``,
which track cancellation requests correctly.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

_RECANCEL_EVERY_S = 0.25


def raise_if_cancelling() -> None:
    """Honour a cancellation a library swallowed. Call after awaiting third-party code in a
    loop that only ends by cancellation."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for ``event`` at most ``timeout_s``; True when it is set."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def stop_task(task: asyncio.Task[object], grace_s: float = 10.0) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again while it has not (a lost
    cancellation is re-delivered); after ``grace_s`` give up with an error in the log rather
    than hang the shutdown. Exceptions of the task are logged, not raised."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            log.error("task %s did not stop within %.0f s; leaving it", task.get_name(), grace_s)
            return
        task.cancel()
        await asyncio.wait({task}, timeout=min(_RECANCEL_EVERY_S, remaining))
    if not task.cancelled() and task.exception() is not None:
        log.warning("task %s ended with %r", task.get_name(), task.exception())
