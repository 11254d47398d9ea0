"""The fusion engine (grf_stream/serving/engine.py) without Ray: served predictions equal GRF.forward, sessions stay apart."""

import asyncio

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from grf_stream.model import GRF, GRFConfig
from grf_stream.serving.engine import FusionService, FusionState, LocalFusion, SeededFusion, ShardLost, StepRequest

SIZES = {"text": 12, "audio": 5, "vision": 8}


@pytest.fixture(params=[{}, {"readout": "text", "readout_weight": 0.4}], ids=["grf", "readout"])
def model(request):
    """The paper's head alone, and with the read-out of (10), whose rho a session carries too."""
    torch.manual_seed(0)
    return GRF(GRFConfig(modalities=SIZES, d_model=32, num_layers=2, num_heads=2, d_ffn=64, **request.param)).eval()


def window(rng, modality, steps):
    return rng.standard_normal((steps, SIZES[modality])).astype(np.float32)


def request(session, seq, modality, x):
    return StepRequest(session, seq, modality, x, np.ones(len(x), bool))


def test_served_predictions_equal_forward_on_the_same_features_and_order(model):
    rng = np.random.default_rng(0)
    order = ["vision", "text", "audio"]
    sessions = {f"s{i}": {m: window(rng, m, 3 + 5 * i + j) for j, m in enumerate(order)} for i in range(4)}
    service = FusionService(model)
    for s in sessions:
        service.open(s)
    served = {s: [] for s in sessions}
    for seq, m in enumerate(order):  # every session's step k in one batched call
        for result in service.step([request(s, seq, m, f[m]) for s, f in sessions.items()]):
            served[result.session].append(result.value)
    for s, features in sessions.items():
        expected = model({m: torch.from_numpy(x)[None] for m, x in features.items()}, order=order)
        assert_close(torch.tensor(served[s]), expected.step_predictions[0])


def test_batched_equals_alone_and_sessions_do_not_leak(model):
    rng = np.random.default_rng(1)
    steps = [(m, window(rng, m, 4 + i)) for i, m in enumerate(["text", "audio", "vision", "audio"])]
    alone = FusionService(model)
    alone.open("a")
    expected = [alone.step([request("a", i, m, x)])[0] for i, (m, x) in enumerate(steps)]

    crowd = FusionService(model)
    for s in ("a", "b", "c"):
        crowd.open(s)
    got = []
    for i, (m, x) in enumerate(steps):
        noise = [request(s, i, m, window(rng, m, 9)) for s in ("b", "c")]
        got.append(crowd.step([noise[0], request("a", i, m, x), noise[1]])[1])
    assert_close(torch.tensor([r.value for r in got]), torch.tensor([r.value for r in expected]))
    assert got[-1].modalities == ("text", "audio", "vision")  # what the context holds, each once


def test_a_long_step_is_not_padded_into_the_short_steps_call(model):
    rng = np.random.default_rng(4)
    service = FusionService(model)
    calls = []
    run_group = service._run_group
    service._run_group = lambda group: calls.append(sorted(len(r.mask) for r in group)) or run_group(group)
    steps = {"short-a": 12, "short-b": 30, "long": 2000}
    for s in steps:
        service.open(s)
    crowd = service.step([request(s, 0, "text", window(rng, "text", rows)) for s, rows in steps.items()])
    assert calls == [[12, 30], [2000]]
    alone = FusionService(model)
    for s in steps:
        alone.open(s)
    rng = np.random.default_rng(4)
    expected = [alone.step([request(s, 0, "text", window(rng, "text", rows))])[0] for s, rows in steps.items()]
    assert_close(torch.tensor([r.value for r in crowd]), torch.tensor([r.value for r in expected]))


def test_two_steps_of_one_session_in_one_call_apply_in_order(model):
    rng = np.random.default_rng(2)
    a, b = window(rng, "text", 5), window(rng, "audio", 7)
    one_call = FusionService(model)
    one_call.open("s")
    together = one_call.step([request("s", 0, "text", a), request("s", 1, "audio", b)])
    separate = FusionService(model)
    separate.open("s")
    apart = separate.step([request("s", 0, "text", a)]) + separate.step([request("s", 1, "audio", b)])
    assert [r.value for r in together] == pytest.approx([r.value for r in apart], abs=1e-6)
    assert [r.step for r in together] == [1, 2]


def test_segments_restart_the_context_unless_carried(model):
    rng = np.random.default_rng(3)
    x = window(rng, "text", 6)
    service = FusionService(model)
    service.open("s")
    first = service.step([request("s", 0, "text", x)])[0]
    service.step([request("s", 1, "audio", window(rng, "audio", 5))])
    assert service.end_segment("s") == 1
    again = service.step([request("s", 2, "text", x)])[0]
    assert (again.segment, again.step, again.value) == (1, 1, pytest.approx(first.value))
    service.end_segment("s", carry_context=True)
    carried = service.step([request("s", 3, "text", x)])[0]
    assert carried.step == 1 and carried.gate > 0 and carried.value != pytest.approx(first.value)


def test_reseeding_from_the_front_end_copy_continues_the_same_context(model):
    rng = np.random.default_rng(4)
    steps = [("text", window(rng, "text", 5)), ("audio", window(rng, "audio", 6)), ("vision", window(rng, "vision", 4))]
    service = FusionService(model)
    service.open("s")
    results = [service.step([request("s", i, m, x)])[0] for i, (m, x) in enumerate(steps)]

    restarted = FusionService(model)  # a fresh actor after a crash
    restarted.open("s", FusionState.after(results[1]))
    assert restarted.step([request("s", 2, *steps[2])])[0].value == pytest.approx(results[2].value, abs=1e-6)


class Restarting(LocalFusion):
    """One shard whose service restarts empty before the `at`-th step call, as a lost actor does;
    `said` is how the backend tells it: ShardLost (an actor backend) or nothing (the next call fails)."""

    def __init__(self, model, at: int, said: bool):
        super().__init__([FusionService(model)])
        self.model, self.at, self.said, self.calls = model, at, said, 0

    async def step(self, shard, requests):
        self.calls += 1
        if self.calls == self.at:
            self.services[0] = FusionService(self.model)
            if self.said:
                raise ShardLost("restarted")
        return await super().step(shard, requests)


@pytest.mark.parametrize("said", [True, False])
def test_a_shard_that_restarts_empty_is_seeded_from_the_copies_and_every_session_goes_on(model, said):
    rng = np.random.default_rng(5)
    plan = [(s, m, window(rng, m, 3 + i)) for i in range(3) for s in ("a", "b") for m in ("text", "audio")]

    async def run(fusion):
        for session in ("a", "b"):
            await fusion.open(0, session)
        values = [(await fusion.step(0, [request(s, i, m, x)]))[0].value for i, (s, m, x) in enumerate(plan[:5])]
        await fusion.end_segment(0, "a", True)  # the copy follows a segment's end too
        return values + [(await fusion.step(0, [request(s, i, m, x)]))[0].value for i, (s, m, x) in enumerate(plan[5:])]

    steady = asyncio.run(run(SeededFusion(LocalFusion([FusionService(model)]))))
    seeded = SeededFusion(Restarting(model, at=7, said=said))
    assert asyncio.run(run(seeded)) == pytest.approx(steady, abs=1e-6)
    assert seeded.backend.calls >= 7 and sorted(seeded.backend.services[0].states) == ["a", "b"]
    assert seeded.copy(0, "a").segment == 1


class LostInFlight(LocalFusion):
    """One shard over a network: every call takes a moment, and the service restarts empty during the
    `at`-th step call; every call in flight then fails with ShardLost, as calls to a lost actor do."""

    def __init__(self, model, at: int):
        super().__init__([FusionService(model)])
        self.model, self.at, self.steps, self.restarts = model, at, 0, 0

    async def _over_the_network(self, seconds: float, call, *args, restart: bool = False):
        restarts = self.restarts
        await asyncio.sleep(seconds / 2)
        if restart:
            self.services[0], self.restarts = FusionService(self.model), self.restarts + 1
        await asyncio.sleep(seconds / 2)
        if self.restarts != restarts:
            raise ShardLost("restarted while this call was in flight")
        return await call(*args)

    async def open(self, shard, session, state):  # slower than a step: its re-seed lags behind the step's
        return await self._over_the_network(0.025, super().open, shard, session, state)

    async def step(self, shard, requests):
        self.steps += 1
        return await self._over_the_network(0.01, super().step, shard, requests, restart=self.steps == self.at)


def test_a_session_opened_while_a_lost_shard_is_reseeded_leaves_every_context_in_step(model):
    """A step and a new session's open both in flight when the shard is lost: both re-seed and retry;
    neither may seed a session from a copy that the other's retried step has just left behind."""
    rng = np.random.default_rng(6)
    plan = [(s, m, window(rng, m, 3 + i)) for i in range(3) for s in ("a", "b") for m in ("text", "audio")]

    async def run(fusion, open_c_at: int | None):
        for session in ("a", "b"):
            await fusion.open(0, session)
        values = []
        for i, (s, m, x) in enumerate(plan):
            step = fusion.step(0, [request(s, i, m, x)])
            if i == open_c_at:  # a hello arrives while this step is in flight
                [result], _ = await asyncio.gather(step, fusion.open(0, "c"))
            else:
                [result] = await step
            values.append(result.value)
        return values

    steady = asyncio.run(run(SeededFusion(LocalFusion([FusionService(model)])), None))
    lost = SeededFusion(LostInFlight(model, at=7))  # lost during b's step (plan[6]): b is re-seeded last
    assert asyncio.run(run(lost, open_c_at=6)) == pytest.approx(steady, abs=1e-6)
    assert sorted(lost.backend.services[0].states) == ["a", "b", "c"]


def test_unknown_session_and_sequence_mode_are_refused(model):
    with pytest.raises(KeyError, match="not open"):
        FusionService(model).step([request("ghost", 0, "text", np.zeros((1, 12), np.float32))])
    with pytest.raises(ValueError, match="init: pooled"):
        FusionService(GRF(GRFConfig(modalities=SIZES, init="sequence", d_model=32, num_heads=2)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_gpu_served_predictions_equal_forward(model):
    rng = np.random.default_rng(5)
    order = ["text", "audio", "vision"]
    sessions = {f"s{i}": {m: window(rng, m, 2 + 3 * i + j) for j, m in enumerate(order)} for i in range(8)}
    service = FusionService(model, device="cuda")
    for s in sessions:
        service.open(s)
    served = {s: [] for s in sessions}
    for seq, m in enumerate(order):
        for result in service.step([request(s, seq, m, f[m]) for s, f in sessions.items()]):
            served[result.session].append(result.value)
    for s, features in sessions.items():
        expected = model.to("cuda")({m: torch.from_numpy(x)[None].cuda() for m, x in features.items()}, order=order)
        assert_close(torch.tensor(served[s]), expected.step_predictions[0].cpu())


def bucketed_against_plain(model, device: str, buckets: bool):
    """The same rounds of steps (a first step, then later ones; 1 to 6 sessions a call, windows of
    3 to 40 rows) through a service with shape buckets and one without; both services and their results."""
    rng = np.random.default_rng(7)
    services = FusionService(model, device, buckets=buckets), FusionService(model, device, buckets=False)
    names = [f"s{i}" for i in range(6)]
    for service in services:
        for name in names:
            service.open(name)
    rounds = [(names[:n], m, rows) for n, m, rows in
              [(6, "text", 5), (1, "audio", 40), (3, "vision", 3), (6, "text", 17), (1, "audio", 33), (5, "vision", 9)]]
    results = [[], []]
    for k, (who, modality, rows) in enumerate(rounds):
        steps = [request(name, k, modality, window(rng, modality, rows + i)) for i, name in enumerate(who)]
        for service, got in zip(services, results):
            got.append(service.step(steps))
    return services, results


def assert_same_results(got, expected):
    """Predictions, contexts and read-outs within 1e-5."""
    for field in ("value", "context", "rho"):
        values = [getattr(r, field) for r in got], [getattr(r, field) for r in expected]
        if values[1][0] is not None:
            assert_close(*(torch.tensor(np.array(v)) for v in values), atol=1e-5, rtol=1e-5)


def test_steps_padded_to_shape_buckets_equal_the_plain_steps(model):
    """What a CUDA graph replays (graphs.py), without the capture: the same numbers."""
    (bucketed, _), (padded, plain) = bucketed_against_plain(model, "cpu", buckets=True)
    for got, expected in zip(padded, plain):
        assert_same_results(got, expected)
        assert [r.rho is None for r in got] == [model.readout is None] * len(got)
    # sessions and rows padded to powers of two (6 and 5 sessions to 8, 17-22 rows to 32); the two audio
    # calls, 40 and 33 rows, share one bucket
    assert sorted((k[2], k[3]) for k in bucketed.fuse.buckets) == [(1, 64), (4, 8), (8, 16), (8, 16), (8, 32)]


def test_a_step_too_large_for_a_bucket_runs_as_it_is(model, monkeypatch):
    from grf_stream.serving import graphs

    monkeypatch.setattr(graphs, "MAX_WINDOW_VALUES", 8 * 16 * SIZES["text"])  # 8 sessions of 16 text rows
    (bucketed, _), (padded, plain) = bucketed_against_plain(model, "cpu", buckets=True)
    for got, expected in zip(padded, plain):
        assert_same_results(got, expected)
    # every round but the second text one (8 sessions, 32 rows): it ran without a bucket
    assert sorted(k[1:4] for k in bucketed.fuse.buckets) == [("audio", 1, 64), ("text", 8, 16), ("vision", 4, 8),
                                                             ("vision", 8, 16)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_gpu_steps_replay_cuda_graphs_and_equal_eager_steps(model):
    (graphed, _), (replayed, eager) = bucketed_against_plain(model, "cuda", buckets=True)
    assert graphed.fuse.buckets and all(b.graph is not None for b in graphed.fuse.buckets.values())
    for got, expected in zip(replayed, eager):
        assert_same_results(got, expected)


def test_warming_up_leaves_no_session_and_changes_no_prediction(model):
    rng = np.random.default_rng(5)
    steps = [request("s", k, m, window(rng, m, 4)) for k, m in enumerate(["audio", "text", "vision"])]
    warmed, fresh = FusionService(model), FusionService(model)
    warmed.warm()
    assert warmed.sessions() == []
    for service in (warmed, fresh):
        service.open("s")
    assert [r.value for r in warmed.step(steps)] == [r.value for r in fresh.step(steps)]


@pytest.mark.parametrize("init", ["pooled", "learned"])
def test_a_first_window_with_no_real_row_starts_nothing(init):
    torch.manual_seed(0)
    model = GRF(GRFConfig(modalities=SIZES, d_model=32, num_heads=2, d_ffn=64, dropout=0.0, init=init)).eval()
    rng = np.random.default_rng(6)
    faceless = StepRequest("s", 0, "vision", np.zeros((3, 8), np.float32), np.zeros(3, bool))
    words = request("s", 1, "text", window(rng, "text", 4))
    service = FusionService(model)
    service.open("s")
    blank = service.step([faceless])[0]
    assert blank.modalities == () and blank.context is None and service.states["s"].context is None
    after = service.step([words])[0]
    fresh = FusionService(model)
    fresh.open("s")
    alone = fresh.step([words])[0]
    assert after.value == pytest.approx(alone.value, abs=1e-6) and after.modalities == ("text",) and after.step == 2
