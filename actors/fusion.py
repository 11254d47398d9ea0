"""Fusion on Ray: `FusionService` as restartable actors, and the front-end's backend over them.

The actor holds the sessions' contexts. When it dies, Ray restarts it empty; once it is back the
backend says so (ShardLost), and the front-end (serving/engine.py, SeededFusion) seeds every session
of that shard from its copies and retries the call that was in flight, so the sessions go on with
the same context.

Ray is the control plane: it places the actors, restarts them, and tells the front-end where each
one's data plane is. The calls that carry the steps travel over that data plane, a ZeroMQ channel
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

import ray
import zmq.asyncio
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from grf_stream.default_model import load_serving_model
from grf_stream.serving.channel import Channel, ChannelLost, ChannelServer
from grf_stream.serving.engine import FusionService, FusionState, ShardLost, StepRequest, StepResult

ACTOR_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)
DATA_PLANES = ("zmq", "ray")


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


def start_fusion_actors(checkpoint: str | Path | None, shards: int, use_gpu: bool, frontend_node: str | None) -> list:
    """`shards` actors, restarted by Ray whenever they die (on another node when theirs is lost),
    spread over the cluster's nodes; on a GPU each when asked."""
    # Half a CPU each: a 2-core machine must fit fusion and the extractor pools together.
    options = {"max_restarts": -1, "max_task_retries": 0, "num_cpus": 0.5, "num_gpus": 1 if use_gpu else 0,
               "scheduling_strategy": "SPREAD"}
    path = str(Path(checkpoint).resolve()) if checkpoint is not None else None  # actors may start elsewhere
    device = "cuda" if use_gpu else "cpu"
    return [FusionActor.options(**options).remote(path, device, frontend_node) for _ in range(shards)]


class RayFusion:
    """The front-end's fusion backend over Ray actors (see `grf_stream.serving.engine.FusionBackend`)."""

    def __init__(self, checkpoint: str | Path | None, shards: int, use_gpu: bool, data_plane: str = "zmq",
                 restart_timeout_s: float = 60):
        if data_plane not in DATA_PLANES:
            raise ValueError(f"data_plane={data_plane!r}: choose one of {', '.join(DATA_PLANES)}")
        frontend_node = ray.util.get_node_ip_address() if data_plane == "zmq" else None
        self.actors = start_fusion_actors(checkpoint, shards, use_gpu, frontend_node)
        self.shards, self.data_plane = shards, data_plane
        self.channels: list[Channel | None] = [None] * shards
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

    def shutdown(self) -> None:
        """The server is stopping: close the data-plane channels (the actors go with Ray)."""
        for shard in range(self.shards):
            self._close_channel(shard)

    async def _call(self, shard: int, method: str, *args):
        """Call the actor; if it was lost, wait until Ray has it back, then say that it lost its sessions."""
        try:
            return await self._send(shard, method, *args)
        except (*ACTOR_LOST, ChannelLost):  # died mid-call, or restarted at another address
            await self._wait_for_restart(shard)
            raise ShardLost(f"fusion actor {shard} was restarted without its sessions") from None

    async def _send(self, shard: int, method: str, *args):
        if self.data_plane == "ray":
            return await getattr(self.actors[shard], method).remote(*args)
        channel = self.channels[shard] or await self._connect(shard)
        return await channel.call(method, args, lambda: self._still_there(shard, channel))

    async def _connect(self, shard: int) -> Channel:
        address = await self.actors[shard].data_plane.remote()
        if self.channels[shard] is None or self.channels[shard].address != address:  # or another call did it
            self._close_channel(shard)
            # The process-wide context: one that is garbage-collected with sockets open blocks forever.
            self.channels[shard] = Channel(address, zmq.asyncio.Context.instance())
        return self.channels[shard]

    def _close_channel(self, shard: int) -> None:
        if self.channels[shard] is not None:
            self.channels[shard].close()
            self.channels[shard] = None

    async def _still_there(self, shard: int, channel: Channel) -> bool:
        """The actor is up at the channel's address (raises if Ray has lost it for good)."""
        return await self.actors[shard].data_plane.remote() == channel.address

    async def _wait_for_restart(self, shard: int) -> None:
        deadline = asyncio.get_running_loop().time() + self.restart_timeout_s
        while True:
            try:
                await self.actors[shard].data_plane.remote()  # answers once the restarted actor is up
                break
            except ACTOR_LOST:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)
        self._close_channel(shard)  # the restarted actor listens elsewhere
