"""Fusion on Ray: `FusionService` as restartable actors, and the front-end's backend over them.

The actor holds the sessions' contexts. When it dies, Ray restarts it empty; the front-end's copies
re-seed every session of that shard and the step that was in flight is retried once, so the
sessions go on with the same context.

An actor is built from a checkpoint path, never from weights in Ray's object store: a restart
rebuilds it from its constructor arguments, and a path stays valid as long as the file does, where
an object may have gone out of scope or been lost with the node that held it. On a cluster the path
must be readable on every node (the packaged model is: it is installed with the package).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from grf_stream.default_model import load_serving_model
from grf_stream.serving.engine import FusionService, FusionState, StepRequest, StepResult, UnknownSession

ACTOR_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)


@ray.remote
class FusionActor(FusionService):
    """A FusionService over the model of a checkpoint file (None: the server's default model)."""

    def __init__(self, checkpoint: str | None, device: str):
        model, _, _ = load_serving_model(checkpoint)
        super().__init__(model, device)


def start_fusion_actors(checkpoint: str | Path | None, shards: int, use_gpu: bool) -> list:
    """`shards` actors, restarted by Ray whenever they die; on a GPU each when asked."""
    # Half a CPU each: a 2-core machine must fit fusion and the extractor pools together.
    options = {"max_restarts": -1, "max_task_retries": 0, "num_cpus": 0.5, "num_gpus": 1 if use_gpu else 0}
    path = str(Path(checkpoint).resolve()) if checkpoint is not None else None  # actors may start elsewhere
    return [FusionActor.options(**options).remote(path, "cuda" if use_gpu else "cpu") for _ in range(shards)]


class RayFusion:
    """The front-end's fusion backend over Ray actors (see `grf_stream.serving.batcher.FusionBackend`)."""

    def __init__(self, checkpoint: str | Path | None, shards: int, use_gpu: bool,
                 copies: Callable[[int], dict[str, FusionState]], restart_timeout_s: float = 60):
        self.actors = start_fusion_actors(checkpoint, shards, use_gpu)
        self.shards = shards
        self.copies = copies  # shard -> the front-end's state copy of each of its sessions
        self.restart_timeout_s = restart_timeout_s

    async def warm(self) -> None:
        """Wait until every actor is up and has run the model once (see FusionService.warm)."""
        await asyncio.gather(*(actor.warm.remote() for actor in self.actors))

    async def open(self, shard: int, session: str, state: FusionState | None) -> None:
        await self._call(shard, "open", session, state)

    async def step(self, shard: int, requests: list[StepRequest]) -> list[StepResult]:
        return await self._call(shard, "step", requests)

    async def end_segment(self, shard: int, session: str, carry_context: bool) -> None:
        await self._call(shard, "end_segment", session, carry_context)

    async def close(self, shard: int, session: str) -> None:
        await self._call(shard, "close", session)

    async def _call(self, shard: int, method: str, *args):
        """Call the actor; if it was lost, re-seed its sessions once it is back and retry once."""
        try:
            return await getattr(self.actors[shard], method).remote(*args)
        except (*ACTOR_LOST, UnknownSession):  # died mid-call, or already restarted without our sessions
            await self._reseed(shard)
            return await getattr(self.actors[shard], method).remote(*args)

    async def _reseed(self, shard: int) -> None:
        deadline = asyncio.get_running_loop().time() + self.restart_timeout_s
        while True:
            try:
                await self.actors[shard].sessions.remote()  # answers once the restarted actor is up
                break
            except ACTOR_LOST:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)
        for session, state in self.copies(shard).items():
            await self.actors[shard].open.remote(session, state)
