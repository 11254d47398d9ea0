"""Fusion on Ray: `FusionService` as restartable actors, and the front-end's backend over them.

The actor holds the sessions' contexts. When it dies, the backend says so (ShardLost), and the
front-end (serving/engine.py, SeededFusion) seeds every session of that shard from its copies and
retries the call that was in flight, so the sessions go on with the same context. What takes the
dead actor's place: a warm standby actor, at once, where the server started one (Ray restarts the
dead one, which becomes the next standby); otherwise the dead actor itself, once Ray has restarted
it (a new process loads torch and the model: seconds, more on a busy node).

Ray is the control plane: it places the actors, restarts them, and tells the front-end where each
one's data plane is. The calls that carry the steps travel over that data plane, a TCP channel
(grf_stream/serving/channel.py) that costs a fraction of a Ray actor call; `data_plane="ray"` sends
them as plain actor calls instead. A channel binds to 127.0.0.1 when its actor runs on the
front-end's node, and to the node's address otherwise (reachable within the cluster, like Ray's
own ports).

An actor is built from a checkpoint path, never from weights in Ray's object store: a restart
rebuilds it from its constructor arguments, and a path stays valid as long as the file does, where
an object may have gone out of scope or been lost with the node that held it. On a cluster the path
must be readable on every node (the packaged model is: it is installed with the package).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Awaitable, Callable

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from grf_stream.default_model import load_serving_model
from grf_stream.serving.channel import Channel, ChannelLost, ChannelServer, check_data_plane
from grf_stream.serving.engine import FusionService, FusionState, ShardLost, StepRequest, StepResult

ACTOR_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)
STANDBY_ANSWERS_S = 1.0  # a standby that does not answer within this is not taking over


@ray.remote
class FusionActor(FusionService):
    """A FusionService over the model of a checkpoint file (None: the server's default model), with
    a data plane when given the front-end's node (None: session calls come as Ray calls)."""

    def __init__(self, checkpoint: str | None, device: str, frontend_node: str | None = None):
        normal_priority()
        model, _, _ = load_serving_model(checkpoint)
        super().__init__(model, device)
        self.channel = ChannelServer(self, data_plane_host(frontend_node)) if frontend_node is not None else None

    def data_plane(self) -> str | None:
        """Where this actor's data plane listens (answers once the actor is up, after a restart too)."""
        return self.channel.address if self.channel is not None else None


def normal_priority() -> None:
    """Run at nice 0 where the OS allows it. Ray starts workers at nice 15 (unless its cluster was
    started with RAY_worker_niceness=0), and a fusion step is every session's serving path: at nice 15
    it waits seconds for the CPU behind any busy process of the machine."""
    if os.getpriority(os.PRIO_PROCESS, 0) <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except PermissionError:
        print(f"grf-stream: this fusion actor runs at nice {os.getpriority(os.PRIO_PROCESS, 0)} and may not lower "
              "it: on a busy node its steps wait for the CPU; start the Ray cluster with RAY_worker_niceness=0",
              file=sys.stderr, flush=True)


def data_plane_host(frontend_node: str) -> str:
    node = ray.util.get_node_ip_address()
    return "127.0.0.1" if node == frontend_node else node


# Half a CPU each: a 2-core machine must fit fusion and the extractor pools together.
ACTOR_CPUS = 0.5


def start_fusion_actors(checkpoint: str | Path | None, count: int, use_gpu: bool, frontend_node: str | None) -> list:
    """`count` actors, restarted by Ray whenever they die (on another node when theirs is lost),
    spread over the cluster's nodes; on a GPU each when asked."""
    options = {"max_restarts": -1, "max_task_retries": 0, "num_cpus": ACTOR_CPUS, "num_gpus": 1 if use_gpu else 0,
               "scheduling_strategy": "SPREAD"}
    path = str(Path(checkpoint).resolve()) if checkpoint is not None else None  # actors may start elsewhere
    device = "cuda" if use_gpu else "cpu"
    return [FusionActor.options(**options).remote(path, device, frontend_node) for _ in range(count)]


class RayFusion:
    """The front-end's fusion backend over Ray actors (see `grf_stream.serving.engine.FusionBackend`)."""

    def __init__(self, checkpoint: str | Path | None, shards: int, use_gpu: bool, data_plane: str = "tcp",
                 restart_timeout_s: float = 60):
        check_data_plane(data_plane)
        self.frontend_node = ray.util.get_node_ip_address() if data_plane == "tcp" else None
        self.checkpoint, self.use_gpu = checkpoint, use_gpu
        self.actors = start_fusion_actors(checkpoint, shards, use_gpu, self.frontend_node)
        self.shards, self.data_plane = shards, data_plane
        self.channels: list[Channel | None] = [None] * shards
        self.restart_timeout_s = restart_timeout_s
        self.standby = None  # a warm actor that takes a lost one's place (start_standby)
        self.standby_ready: asyncio.Task | None = None  # done once the standby is up and warm

    async def warm(self) -> None:
        """Wait until every actor is up and has run the model once (see FusionService.warm)."""
        await asyncio.gather(*(actor.warm.remote() for actor in self.actors))

    def start_standby(self) -> bool:
        """Start a standby actor if the cluster has room for one beside everything already placed
        (call it once the shards and extractors are up); False if it has not."""
        free = ray.available_resources()
        if free.get("CPU", 0) < ACTOR_CPUS or (self.use_gpu and free.get("GPU", 0) < 1):
            return False
        self._make_standby(start_fusion_actors(self.checkpoint, 1, self.use_gpu, self.frontend_node)[0])
        return True

    def _make_standby(self, actor) -> None:
        """`actor` is the standby, ready once it is up (Ray may be restarting it) and has run the model."""
        self.standby = actor
        self.standby_ready = asyncio.ensure_future(_once_up(actor.warm.remote))

    async def open(self, shard: int, session: str, state: FusionState | None) -> None:
        await self._call(shard, "open", session, state)

    async def step(self, shard: int, requests: list[StepRequest]) -> list[StepResult]:
        return await self._call(shard, "step", requests)

    async def end_segment(self, shard: int, session: str, carry_context: bool) -> None:
        await self._call(shard, "end_segment", session, carry_context)

    async def close(self, shard: int, session: str) -> None:
        await self._call(shard, "close", session)

    def shutdown(self) -> None:
        """The server is stopping: close the data-plane channels (the actors go with Ray)."""
        if self.standby_ready is not None:
            self.standby_ready.cancel()
        for shard in range(self.shards):
            self._close_channel(shard)

    async def _call(self, shard: int, method: str, *args):
        """Call the actor; if it was lost, replace it (_replace), then say that the shard lost its sessions."""
        try:
            return await self._send(shard, method, *args)
        except (*ACTOR_LOST, ChannelLost):  # died mid-call, or restarted at another address
            await self._replace(shard)
            raise ShardLost(f"fusion actor {shard} was replaced by one without its sessions") from None

    async def _replace(self, shard: int) -> None:
        """The standby takes the lost actor's place if it is ready, and the lost one, which Ray
        restarts, becomes the next standby; without one ready, wait until Ray has the lost one back
        (its data plane answers once it is up). Either listens elsewhere: the channel goes."""
        self._close_channel(shard)
        lost = self.actors[shard]
        if not await self._standby_is_up():
            await _once_up(lost.data_plane.remote, self.restart_timeout_s)
            self._close_channel(shard)  # one a call opened to the lost actor while it was restarting
            return
        self.actors[shard] = self.standby
        self._make_standby(lost)

    async def _standby_is_up(self) -> bool:
        """A standby is ready, and still answers (it may have been lost with its node since)."""
        ready = self.standby_ready
        if ready is None or not ready.done() or ready.cancelled() or ready.exception() is not None:
            return False
        try:
            await asyncio.wait_for(self.standby.data_plane.remote(), STANDBY_ANSWERS_S)
            return True
        except (*ACTOR_LOST, asyncio.TimeoutError):
            return False

    async def _send(self, shard: int, method: str, *args):
        if self.data_plane == "ray":
            return await getattr(self.actors[shard], method).remote(*args)
        channel = self.channels[shard] or await self._connect(shard)
        return await channel.call(method, args, lambda: self._still_there(shard, channel))

    async def _connect(self, shard: int) -> Channel:
        address = await self.actors[shard].data_plane.remote()
        if self.channels[shard] is None or self.channels[shard].address != address:  # or another call did it
            channel = await Channel.connect(address)
            self._close_channel(shard)
            self.channels[shard] = channel
        return self.channels[shard]

    def _close_channel(self, shard: int) -> None:
        if self.channels[shard] is not None:
            self.channels[shard].close()
            self.channels[shard] = None

    async def _still_there(self, shard: int, channel: Channel) -> bool:
        """The actor is up at the channel's address (raises if Ray has lost it for good)."""
        return await self.actors[shard].data_plane.remote() == channel.address


async def _once_up(call: Callable[[], Awaitable], timeout_s: float | None = None):
    """An actor method's answer once the actor is up: Ray may be restarting it (the loss is raised
    again past `timeout_s`; None: wait as long as it takes)."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    while True:
        try:
            return await call()
        except ACTOR_LOST:
            if deadline is not None and loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)
