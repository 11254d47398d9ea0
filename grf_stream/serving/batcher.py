"""The steps of every session, batched per fusion shard, each session served in turn.

A session always goes to the same shard (a hash of its id, stable across restarts). Each shard
keeps a queue per session and a batch takes one round: the oldest waiting step of every session
that has one, up to `max_batch`. A session with many steps waiting (a flood, a client replaying a
file at full speed) advances one step per batch, like every other session, instead of filling
batches whose length (one model call per step of the same session) every other session would wait
out. A lone session's backlog still goes as one batch: nobody waits behind it. `max_wait_ms` can
hold a batch open longer to fill it.

Work that must follow a session's steps (a segment's end, a close) is a `Control` in the same
session's queue, run after the batch it would have joined. A shard holds at most
`max_queued_steps`, and a session at most `max_session_steps`: a full queue holds that session's
worker back (its own inbox then fills, and its client hears `busy`), not the other sessions'.
"""

from __future__ import annotations

import asyncio
import sys
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Awaitable, Callable

from grf_stream.serving.engine import FusionBackend, StepRequest, StepResult


@dataclass
class Control:
    """Work that must run in order with a session's steps (segment end, close)."""

    run: Callable[[], Awaitable[None]]


class FairQueue:
    """One shard's waiting work: a queue per session, taken round by round in turn."""

    def __init__(self, max_items: int, max_per_session: int):
        self.max_items, self.max_per_session = max_items, max_per_session
        self.waiting: OrderedDict[str, deque] = OrderedDict()  # session -> its items; first = next served
        self.size = 0
        self.arrived, self.room = asyncio.Event(), asyncio.Event()

    def qsize(self) -> int:
        return self.size

    async def put(self, session: str, item: StepRequest | Control) -> None:
        """Queue an item, once the shard and the session have room for it."""
        while self.size >= self.max_items or len(self.waiting.get(session, ())) >= self.max_per_session:
            self.room.clear()
            await self.room.wait()
        self.waiting.setdefault(session, deque()).append(item)
        self.size += 1
        self.arrived.set()

    async def wait(self, timeout: float | None = None) -> bool:
        """Until an item arrives (at once if one waits), or the timeout passes (False)."""
        if timeout is None and self.size:
            return True
        self.arrived.clear()
        try:
            await asyncio.wait_for(self.arrived.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def take_round(self, room: int, taken: set[str]) -> tuple[list[StepRequest], list[Control]]:
        """The oldest item of each session not yet `taken`, up to `room` steps; each served session goes
        to the back of the turn."""
        steps: list[StepRequest] = []
        controls: list[Control] = []
        for session in [s for s in self.waiting if s not in taken]:
            if len(steps) >= room:
                break
            item = self._pop(session)
            (controls if isinstance(item, Control) else steps).append(item)
            taken.add(session)
        return steps, controls

    def take_backlog(self, session: str, room: int) -> list[StepRequest]:
        """More steps of a session that is the only one waiting, up to `room`, stopping at a control."""
        steps: list[StepRequest] = []
        while len(steps) < room and list(self.waiting) == [session]:
            if isinstance(self.waiting[session][0], Control):
                break
            steps.append(self._pop(session))
        return steps

    def _pop(self, session: str) -> StepRequest | Control:
        items = self.waiting[session]
        item = items.popleft()
        if items:
            self.waiting.move_to_end(session)
        else:
            del self.waiting[session]
        self.size -= 1
        self.room.set()
        return item


class Batcher:
    def __init__(self, fusion: FusionBackend, max_batch: int, max_wait_ms: float, max_queued_steps: int,
                 clock: Callable[[], float], on_result: Callable[[StepResult], None],
                 on_failure: Callable[[StepRequest, BaseException], None], max_session_steps: int):
        self.fusion, self.max_batch, self.max_wait_ms, self.clock = fusion, max_batch, max_wait_ms, clock
        self.on_result, self.on_failure = on_result, on_failure
        self.queues = [FairQueue(max_queued_steps, max_session_steps) for _ in range(fusion.shards)]

    def shard(self, session: str) -> int:
        return zlib.crc32(session.encode()) % self.fusion.shards

    async def put(self, session: str, item: StepRequest | Control) -> None:
        await self.queues[self.shard(session)].put(session, item)

    def queued(self, shard: int) -> int:
        return self.queues[shard].qsize()

    async def run_shard(self, shard: int) -> None:
        """Forever: take a batch of this shard's steps and run it, then the controls it met."""
        queue = self.queues[shard]
        while True:
            await queue.wait()
            batch, controls = await self.collect(queue)
            if batch:
                await self.run_batch(shard, batch)
            for control in controls:
                await run_control(control)

    async def collect(self, queue: FairQueue) -> tuple[list[StepRequest], list[Control]]:
        """A round of the waiting sessions (a lone session: its backlog, up to a control), then, within
        max_wait_ms, the sessions that arrive, until max_batch."""
        deadline = self.clock() + self.max_wait_ms / 1000
        batch, controls = [], []
        taken: set[str] = set()
        while len(batch) < self.max_batch:
            steps, met = queue.take_round(self.max_batch - len(batch), taken)
            if steps and not met and len(taken) == 1:
                steps += queue.take_backlog(next(iter(taken)), self.max_batch - len(batch) - len(steps))
            batch += steps
            controls += met
            if steps or met:
                continue
            timeout = deadline - self.clock()
            if timeout <= 0 or not await queue.wait(timeout):
                break
        return batch, controls

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
