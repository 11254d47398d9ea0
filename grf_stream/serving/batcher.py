"""The steps of every session, batched per fusion shard.

A session always goes to the same shard (a hash of its id, stable across restarts). A batch takes
every step that queued while the previous one ran, up to `max_batch`, so a lone step goes at once
and a busy server batches; `max_wait_ms` can hold a batch open longer to fill it. Work that must
follow a session's steps (a segment's end, a close) is a `Control` in the same queue. A queue holds
at most `max_queued_steps`: a full one holds the sessions' workers back.
"""

from __future__ import annotations

import asyncio
import sys
import zlib
from dataclasses import dataclass
from typing import Awaitable, Callable

from grf_stream.serving.engine import FusionBackend, StepRequest, StepResult


@dataclass
class Control:
    """Work that must run in order with a shard's steps (segment end, close)."""

    run: Callable[[], Awaitable[None]]


class Batcher:
    def __init__(self, fusion: FusionBackend, max_batch: int, max_wait_ms: float, max_queued_steps: int,
                 clock: Callable[[], float], on_result: Callable[[StepResult], None],
                 on_failure: Callable[[StepRequest, BaseException], None]):
        self.fusion, self.max_batch, self.max_wait_ms, self.clock = fusion, max_batch, max_wait_ms, clock
        self.on_result, self.on_failure = on_result, on_failure
        self.queues = [asyncio.Queue(max_queued_steps) for _ in range(fusion.shards)]

    def shard(self, session: str) -> int:
        return zlib.crc32(session.encode()) % self.fusion.shards

    async def put(self, session: str, item: StepRequest | Control) -> None:
        await self.queues[self.shard(session)].put(item)

    async def run_shard(self, shard: int) -> None:
        """Forever: take a batch of this shard's steps (or one control) and run it."""
        queue = self.queues[shard]
        while True:
            item = await queue.get()
            if isinstance(item, Control):
                await run_control(item)
                continue
            batch, control = await self.collect(queue, [item])
            await self.run_batch(shard, batch)
            if control is not None:
                await run_control(control)

    async def collect(self, queue: asyncio.Queue, batch: list) -> tuple[list[StepRequest], Control | None]:
        """More steps until max_batch or max_wait_ms; a control ends the batch (it must follow it)."""
        deadline = self.clock() + self.max_wait_ms / 1000
        while len(batch) < self.max_batch:
            if queue.empty():
                timeout = deadline - self.clock()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
            else:
                item = queue.get_nowait()
            if isinstance(item, Control):
                return batch, item
            batch.append(item)
        return batch, None

    async def run_batch(self, shard: int, batch: list[StepRequest]) -> None:
        """Fuse a batch; if it fails, each session's steps again on their own, so that a step that
        fails fails alone (the fusion service leaves every context as it was when a call fails)."""
        try:
            results = await self.fusion.step(shard, batch)
        except Exception as error:  # the backend already retried once after losing its actor
            by_session: dict[str, list[StepRequest]] = {}
            for request in batch:
                by_session.setdefault(request.session, []).append(request)
            if len(by_session) > 1:
                for requests in by_session.values():
                    await self.run_batch(shard, requests)
                return
            for request in batch:  # the session goes on without this step
                self.on_failure(request, error)
            return
        for result in results:
            self.on_result(result)


async def run_control(control: Control) -> None:
    try:
        await control.run()
    except Exception as error:  # e.g. a session closing while its actor restarts: nothing left to undo,
        # but said, so that a failure that is not a fault (a bug) cannot pass unseen
        print(f"grf-stream: a segment end or a close failed on the fusion side: {error!r}", file=sys.stderr,
              flush=True)
