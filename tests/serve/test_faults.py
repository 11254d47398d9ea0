"""Faults on real Ray actors: a killed fusion or extractor actor loses no session."""

import asyncio

import numpy as np
import pytest
import ray
import torch
from torch.testing import assert_close

from actors.extractors import RayExtractors, start_extractor_pools
from actors.fusion import ACTOR_LOST, RayFusion
from grf_stream.checkpoint import save_checkpoint
from grf_stream.model import GRF, GRFConfig
from grf_stream.serving import protocol as p
from grf_stream.serving.frontend import FrontEnd, FrontEndConfig
from grf_stream.spec import FeatureSpec, ModalitySpec

SIZES = {"text": 384, "audio": 5, "video": 8}
ORDER = ["audio", "video", "text"]


pytestmark = pytest.mark.usefixtures("local_ray")


def small_model(tmp_path):
    """A small GRF, and the checkpoint file the fusion actor loads it from (as the server's does)."""
    torch.manual_seed(0)
    model = GRF(GRFConfig(modalities=SIZES, d_model=32, num_layers=1, num_heads=2, d_ffn=64, dropout=0.0)).eval()
    spec = FeatureSpec({m: ModalitySpec("test", "1", d, 0.0) for m, d in SIZES.items()})
    save_checkpoint(tmp_path / "small.pt", model, spec)
    return model, tmp_path / "small.pt"


def frontend(checkpoint, extractors=None, data_plane="tcp"):
    fusion = RayFusion(checkpoint, 1, False, data_plane)
    return FrontEnd(SIZES, {"audio": 100.0, "video": 30.0}, fusion, extractors, FrontEndConfig())


async def send(front, messages, wait_for: int):
    """Send, then collect replies until `wait_for` predictions or errors have come back."""
    for m in messages:
        await front.handle(b"c", p.encode(m))
    out = []
    while len([r for r in out if isinstance(r, (p.Prediction, p.Error))]) < wait_for:
        out.append((await asyncio.wait_for(front.outbox.get(), 60))[1])
    return out


@pytest.mark.parametrize("data_plane", ["tcp", "ray"])
@pytest.mark.parametrize("restarted_before_next_step", [False, True])
def test_killing_the_fusion_actor_mid_stream_keeps_every_context(restarted_before_next_step, data_plane, tmp_path):
    model, checkpoint = small_model(tmp_path)
    rng = np.random.default_rng(0)
    data = {f"s{i}": {m: rng.standard_normal((3 + i, d)).astype(np.float32) for m, d in SIZES.items()} for i in range(4)}

    async def scenario():
        front = frontend(checkpoint, data_plane=data_plane)
        runner = asyncio.create_task(front.batcher.run_shard(0))
        await send(front, [p.Hello(s, 0, 0.0, ORDER, "window") for s in data], 0)
        await asyncio.sleep(0.5)
        got = []
        for k, m in enumerate(ORDER):
            if k == 2:
                ray.kill(front.fusion.backend.actors[0], no_restart=False)  # Ray restarts it, empty
                if restarted_before_next_step:
                    await asyncio.sleep(3)
            msgs = [p.Features(s, k + 1, 0.0, m, xs[m], None) for s, xs in data.items()]
            got += await send(front, msgs, len(data))
        runner.cancel()
        return got

    got = asyncio.run(scenario())
    assert not [r for r in got if isinstance(r, p.Error)]
    for s, xs in data.items():
        served = torch.tensor([r.value for r in got if isinstance(r, p.Prediction) and r.session == s])
        expected = model({m: torch.from_numpy(x)[None] for m, x in xs.items()}, order=ORDER)
        assert_close(served, expected.step_predictions[0])


def test_a_warm_standby_takes_a_killed_actors_place_twice(tmp_path):
    """Killed before step 2 and again before step 3: each time the standby takes over (the actor
    serving the shard is the former standby; the killed one, restarted by Ray, is the next standby)
    and every context goes on as if nothing had happened."""
    model, checkpoint = small_model(tmp_path)
    rng = np.random.default_rng(1)
    data = {f"s{i}": {m: rng.standard_normal((2 + i, d)).astype(np.float32) for m, d in SIZES.items()}
            for i in range(3)}

    async def scenario():
        front = frontend(checkpoint)
        backend = front.fusion.backend
        assert backend.start_standby()
        await backend.standby_ready
        runner = asyncio.create_task(front.batcher.run_shard(0))
        await send(front, [p.Hello(s, 0, 0.0, ORDER, "window") for s in data], 0)
        got, swaps = [], []
        for k, m in enumerate(ORDER):
            if k:
                await backend.standby_ready  # the killed actor back, warm, as the next standby
                serving, standby = backend.actors[0], backend.standby
                address = await serving.data_plane.remote()
                ray.kill(serving, no_restart=False)
                await until_restarted(serving, address)  # dead for sure before the next step (the kill is async)
            got += await send(front, [p.Features(s, k + 1, 0.0, m, xs[m], None) for s, xs in data.items()], len(data))
            if k:
                swaps.append((backend.actors[0]._actor_id == standby._actor_id,
                              backend.standby._actor_id == serving._actor_id))
        runner.cancel()
        backend.shutdown()
        return got, swaps

    got, swaps = asyncio.run(scenario())
    assert swaps == [(True, True), (True, True)]
    assert not [r for r in got if isinstance(r, p.Error)]
    for s, xs in data.items():
        served = torch.tensor([r.value for r in got if isinstance(r, p.Prediction) and r.session == s])
        expected = model({m: torch.from_numpy(x)[None] for m, x in xs.items()}, order=ORDER)
        assert_close(served, expected.step_predictions[0])


async def until_restarted(actor, address: str) -> None:
    """Until the actor answers as another incarnation than the one at `address`."""
    while True:
        try:
            if await actor.data_plane.remote() != address:
                return
        except ACTOR_LOST:  # the call met the restart
            pass
        await asyncio.sleep(0.1)


def test_killing_an_extractor_actor_loses_no_session(tmp_path):
    _, checkpoint = small_model(tmp_path)

    async def scenario():
        front = frontend(checkpoint, RayExtractors(start_extractor_pools(["text"])))
        runner = asyncio.create_task(front.batcher.run_shard(0))
        await send(front, [p.Hello("s", 0, 0.0, ["text"], "window")], 0)
        first = await send(front, [p.Text("s", 1, 1.0, "what a wonderful film", True)], 1)
        ray.kill(front.policy.extractors.pools["text"][0], no_restart=False)
        second = await send(front, [p.Text("s", 2, 2.0, "and the acting is great", True)], 1)
        runner.cancel()
        return first + second

    got = [r for r in asyncio.run(scenario()) if isinstance(r, (p.Prediction, p.Error))]
    assert [type(r) for r in got] == [p.Prediction, p.Prediction], got
    assert [r.step for r in got] == [1, 2]
