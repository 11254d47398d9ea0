"""The batcher serves sessions in turn: a flooding session cannot make the others wait out its backlog."""

import asyncio

import numpy as np

from grf_stream.serving.batcher import Batcher, Control
from grf_stream.serving.engine import StepRequest, StepResult


class Recording:
    """A fusion backend that records the sessions of each batch and answers at once."""

    shards = 1

    def __init__(self):
        self.batches: list[list[tuple[str, int]]] = []

    async def step(self, shard, requests):
        self.batches.append([(r.session, r.seq) for r in requests])
        return [StepResult(r.session, r.seq, 0, 1, r.modality, (r.modality,), 0.0, 0.0, None) for r in requests]


def request(session: str, seq: int) -> StepRequest:
    return StepRequest(session, seq, "audio", np.zeros((1, 5), np.float32), np.ones(1, bool))


def batcher(backend, max_batch=64, max_session_steps=100) -> tuple[Batcher, list]:
    answered = []
    return Batcher(backend, max_batch, 0.0, 1024, lambda: 0.0, answered.append, None, max_session_steps), answered


async def drain(batcher: Batcher, answered: list, count: int) -> None:
    runner = asyncio.create_task(batcher.run_shard(0))
    while len(answered) < count:
        await asyncio.sleep(0.001)
    runner.cancel()


def test_a_flooding_session_advances_one_step_per_batch_beside_the_others():
    backend = Recording()
    batch, answered = batcher(backend)

    async def scenario():
        for seq in range(40):
            await batch.put("flood", request("flood", seq))
        for name in ("a", "b"):
            await batch.put(name, request(name, 0))
        await drain(batch, answered, 42)

    asyncio.run(scenario())
    first = backend.batches[0]
    assert sorted(first) == [("a", 0), ("b", 0), ("flood", 0)], first  # not the flood's 40 steps first
    flood = [seq for b in backend.batches for s, seq in b if s == "flood"]
    assert flood == list(range(40))  # in order, none lost


def test_a_lone_sessions_backlog_goes_in_one_batch_up_to_its_control():
    backend = Recording()
    batch, answered = batcher(backend)
    ran = []

    async def mark():
        ran.append(len(answered))

    async def scenario():
        for seq in range(5):
            await batch.put("s", request("s", seq))
        await batch.put("s", Control(mark))
        for seq in range(5, 8):
            await batch.put("s", request("s", seq))
        await drain(batch, answered, 8)

    asyncio.run(scenario())
    assert backend.batches == [[("s", seq) for seq in range(5)], [("s", seq) for seq in range(5, 8)]]
    assert ran == [5]  # the control ran after the steps before it and before the ones after it


def test_a_full_session_queue_holds_back_only_that_session():
    batch, _ = batcher(Recording(), max_session_steps=4)

    async def scenario():
        for seq in range(4):
            await batch.put("flood", request("flood", seq))
        blocked = asyncio.create_task(batch.put("flood", request("flood", 4)))
        await asyncio.wait_for(batch.put("other", request("other", 0)), 1.0)  # not held back by the flood
        await asyncio.sleep(0.01)
        held = not blocked.done()
        batch.queues[0].take_round(64, set())  # a batch takes one step of each: room for the flood's fifth
        await asyncio.wait_for(blocked, 1.0)
        return held

    assert asyncio.run(scenario())
