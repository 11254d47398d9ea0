"""Scale-out and node loss: a two-node Ray cluster on this machine (a head raylet and a second one
with resources of its own), fusion actors on both, sessions on both; the second node's raylet is
killed mid-stream and no session loses its place."""

import asyncio

import numpy as np
import pytest
import ray
import torch
from ray.cluster_utils import Cluster
from torch.testing import assert_close

from actors.fusion import RayFusion
from grf_stream.serving import protocol as p
from grf_stream.serving.frontend import FrontEnd, FrontEndConfig

from test_faults import ORDER, SIZES, send, small_model


@pytest.fixture
def two_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    second = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    try:
        yield cluster, second
    finally:
        ray.shutdown()
        cluster.shutdown()


def node_of(actor) -> str:
    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))


async def restarted_on(node: str, actors, timeout_s: float = 60) -> None:
    """Until Ray has seen the node go and restarted its actor elsewhere (on `node`)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        try:
            if all(node_of(actor) == node for actor in actors):
                return
        except ray.exceptions.RayActorError:  # restarting
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"the lost node's fusion actor was not restarted within {timeout_s} s")


def test_losing_a_node_mid_stream_loses_no_session_and_no_context(two_nodes, tmp_path):
    cluster, second = two_nodes
    model, checkpoint = small_model(tmp_path)
    rng = np.random.default_rng(1)
    data = {f"s{i}": {m: rng.standard_normal((3 + i, d)).astype(np.float32) for m, d in SIZES.items()}
            for i in range(6)}

    async def scenario():
        front = FrontEnd(SIZES, {}, RayFusion(checkpoint, 2, False), None, FrontEndConfig())
        fusion = front.fusion.backend
        nodes = [node_of(actor) for actor in fusion.actors]
        assert set(nodes) == {cluster.head_node.node_id, second.node_id}  # one fusion actor on each node
        shards = {front.batcher.shard(s) for s in data}
        assert shards == {0, 1}  # sessions on both
        runners = [asyncio.create_task(front.batcher.run_shard(i)) for i in range(2)]
        await send(front, [p.Hello(s, 0, 0.0, ORDER, "window") for s in data], 0)
        await asyncio.sleep(0.5)
        got = []
        for k, m in enumerate(ORDER):
            if k == 2:
                cluster.remove_node(second, allow_graceful=False)  # its raylet and every process on it die
                await restarted_on(cluster.head_node.node_id, fusion.actors)
            got += await send(front, [p.Features(s, k + 1, 0.0, m, xs[m], None) for s, xs in data.items()], len(data))
        moved = [node_of(actor) for actor in fusion.actors]
        lost = nodes.index(second.node_id)
        held = sorted(await fusion.actors[lost].sessions.remote())  # the restarted actor was seeded again
        assert held == sorted(s for s in data if front.batcher.shard(s) == lost)
        for runner in runners:
            runner.cancel()
        fusion.shutdown()
        return got, moved

    got, moved = asyncio.run(scenario())
    assert not [r for r in got if isinstance(r, p.Error)]
    assert set(moved) == {cluster.head_node.node_id}  # the lost node's actor restarted on the head
    for s, xs in data.items():
        served = torch.tensor([r.value for r in got if isinstance(r, p.Prediction) and r.session == s])
        expected = model({m: torch.from_numpy(x)[None] for m, x in xs.items()}, order=ORDER)
        assert_close(served, expected.step_predictions[0], atol=1e-5, rtol=0)
