"""Samples from every source flow through one bounded queue into batched store writes.

Before the queue, :class:`OtherPointThinning` keeps only some samples of points of role
``other`` (store.other_points): attribution never reads them, and on a Raspberry Pi's SD card
storing five voltages and currents per meter every second is most of the bytes written.

Sources call :meth:`SampleBatcher.put` from the event loop (it never blocks them). The writer
commits one transaction per batch — by count or by age, whichever comes first — because one
commit per sample is hundreds of times slower on SD cards. When the store is failing, samples wait
in memory up to ``max_pending``; beyond that the *oldest raw samples* are dropped and counted
(DESIGN §7: raw samples give way before anything else; business records never pass here).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from edge_agent.domain import NS_PER_S, PointRole, Quality, Sample
from edge_agent.tasks import wait_event

log = logging.getLogger(__name__)

_DROP_WARNING_EVERY_S = 60.0


class OtherPointThinning:
    """Which samples of ``other``-role points are stored; every other sample passes.

    A point's sample is stored when it is the first one seen, when its quality differs from the
    last stored one (a failure and its recovery are always on record), when it falls in a new
    ``every_s`` slot of the UTC clock (so one per minute lands at each minute, with no drift),
    and, with ``on_change``, when its value moved by more than that from the last stored value.
    """

    def __init__(self, every_s: float, on_change: float | None) -> None:
        self._slot_ns = round(every_s * NS_PER_S)
        self._on_change = on_change
        self._last: dict[tuple[str, str], tuple[int, float | None, Quality]] = {}
        self.thinned = 0  # samples not stored

    def keep(self, samples: Sequence[Sample]) -> Sequence[Sample]:
        if self._slot_ns == 0:
            return samples
        kept: list[Sample] = []
        last = self._last
        for sample in samples:
            if sample.role is not PointRole.OTHER:
                kept.append(sample)
                continue
            key = (sample.meter_id, sample.point)
            previous = last.get(key)
            if previous is None or self._due(previous, sample):
                last[key] = (sample.ts_ns // self._slot_ns, sample.value, sample.quality)
                kept.append(sample)
            else:
                self.thinned += 1
        return kept

    def _due(self, previous: tuple[int, float | None, Quality], sample: Sample) -> bool:
        slot, value, quality = previous
        if sample.quality is not quality or sample.ts_ns // self._slot_ns != slot:
            return True
        if self._on_change is None or sample.value is None or value is None:
            return False
        return abs(sample.value - value) > self._on_change  # on_change 0: any change


class SampleBatcher:
    def __init__(
        self,
        write: Callable[[Sequence[Sample]], Awaitable[None]],
        *,
        max_batch: int,
        max_delay_s: float,
        max_pending: int = 200_000,
        after_write: Callable[[Sequence[Sample]], Awaitable[None]] | None = None,
    ) -> None:
        self._write = write
        self._after_write = after_write
        self._max_batch = max_batch
        self._max_delay_s = max_delay_s
        self._pending: deque[Sample] = deque()
        self._max_pending = max_pending
        self._wakeup = asyncio.Event()
        self.written = 0
        self.dropped = 0
        self._next_drop_warning = 0.0  # monotonic
        self.failed_writes = 0
        self.failing_since: float | None = None  # monotonic; set while writes fail

    def put(self, samples: Sequence[Sample]) -> None:
        self._pending.extend(samples)
        overflow = len(self._pending) - self._max_pending
        if overflow > 0:
            for _ in range(overflow):
                self._pending.popleft()
            self.dropped += overflow
            # Once per minute at most: while the buffer stays full every poll drops samples, and
            # a warning per poll (a thousand a second at 1,000 meters) would cost the event loop
            # the time the writer needs to catch up.
            now = time.monotonic()
            if now >= self._next_drop_warning:
                self._next_drop_warning = now + _DROP_WARNING_EVERY_S
                log.warning(
                    "sample buffer full (%d samples waiting for the store): dropped the oldest "
                    "raw samples, %d in all so far",
                    len(self._pending),
                    self.dropped,
                )
        if len(self._pending) >= self._max_batch:
            self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def write_soon(self) -> None:
        """Write the pending samples now, not when the batch is due (an order waits for them)."""
        if self._pending:
            self._wakeup.set()

    def oldest_pending_ns(self) -> int | None:
        """The time of the first sample still to write (sources put them in time order)."""
        return self._pending[0].ts_ns if self._pending else None

    async def run(self) -> None:
        """Write batches until cancelled; on cancellation, the caller runs :meth:`flush`."""
        while True:
            await wait_event(self._wakeup, self._max_delay_s)
            self._wakeup.clear()
            await self.flush()

    async def flush(self) -> None:
        while self._pending:
            batch = [
                self._pending.popleft() for _ in range(min(self._max_batch, len(self._pending)))
            ]
            try:
                await self._write(batch)
            except Exception:
                # Keep the batch for the next attempt; the store logs its own failure.
                self._pending.extendleft(reversed(batch))
                self.failed_writes += 1
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                log.exception("writing %d samples failed; will retry", len(batch))
                await asyncio.sleep(min(self._max_delay_s, 1.0))
                return
            self.written += len(batch)
            self.failing_since = None
            if self._after_write is not None:
                await self._after_write(batch)
