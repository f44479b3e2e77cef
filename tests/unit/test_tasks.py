"""Shutdown must end every task even when a library swallowed a cancellation (CPython gh-86296:
3.11's wait_for loses a cancel that arrives as its inner call completes)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from edge_agent.tasks import raise_if_cancelling, stop_task, wait_event


async def _swallows_first_cancellations(times: int) -> None:
    """Polls like a source loop whose reads swallow the first ``times`` cancellations."""
    swallowed = 0
    while True:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if swallowed == times:
                raise
            swallowed += 1


async def test_stop_task_redelivers_a_swallowed_cancellation() -> None:
    task = asyncio.create_task(_swallows_first_cancellations(2))
    await asyncio.sleep(0.05)
    await stop_task(task, grace_s=5.0)
    assert task.cancelled()


async def test_plain_cancel_of_such_a_task_does_not_end_it() -> None:
    """The failure stop_task exists for: one cancel() is lost and the loop goes on."""
    task = asyncio.create_task(_swallows_first_cancellations(1))
    await asyncio.sleep(0.03)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.2)
    assert not done
    assert task.cancelling() == 1  # the request is still counted on the task
    await stop_task(task)
    assert task.cancelled()


async def test_raise_if_cancelling_honours_a_counted_request() -> None:
    async def loop() -> None:
        while True:
            with contextlib.suppress(asyncio.CancelledError):  # what the library did
                await asyncio.sleep(0.01)
            raise_if_cancelling()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.03)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)


async def test_stop_task_gives_up_after_grace_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    released = asyncio.Event()

    async def immortal() -> None:
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    task = asyncio.create_task(immortal(), name="immortal")
    await asyncio.sleep(0.03)  # started: a task cancelled before its first step just ends
    await stop_task(task, grace_s=0.3)
    assert not task.done()
    assert "task immortal did not stop within" in caplog.text
    released.set()  # let the test end
    await task


async def test_stop_task_logs_a_failure_instead_of_raising(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails(), name="fails")
    await asyncio.sleep(0)
    await stop_task(task)
    assert "task fails ended with RuntimeError('boom')" in caplog.text


async def test_wait_event() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 1.0) is True
