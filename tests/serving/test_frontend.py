"""The front-end as a message-level harness, no Ray, no sockets: these messages in, these out."""

import asyncio

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from grf_stream.model import GRF, GRFConfig
from grf_stream.serving import protocol as p
from grf_stream.serving.engine import FusionService, LocalFusion
from grf_stream.serving.frontend import FrontEnd, FrontEndConfig

SIZES = {"text": 12, "audio": 5, "video": 8}


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def make_frontend(shards=1, clock=None, **config):
    torch.manual_seed(0)
    model = GRF(GRFConfig(modalities=SIZES, d_model=32, num_layers=1, num_heads=2, d_ffn=64, dropout=0.0)).eval()
    fusion = LocalFusion([FusionService(model) for _ in range(shards)])
    front = FrontEnd(SIZES, {"audio": 100.0, "video": 30.0}, fusion, None, FrontEndConfig(**config),
                     clock or Clock())
    return front, model


async def exchange(front, messages, identity=b"client"):
    """Send every message, let the front-end work, return everything it answered."""
    runners = [asyncio.create_task(front.batcher.run_shard(i)) for i in range(front.fusion.shards)]
    for message in messages:
        await front.handle(identity, message if isinstance(message, bytes) else p.encode(message))
        await asyncio.sleep(0)
    for _ in range(50):
        await asyncio.sleep(0.005)
    for r in runners:
        r.cancel()
    replies = []
    while not front.outbox.empty():
        replies.append(front.outbox.get_nowait()[1])
    return replies


def hello(session="s", window="window", **extra):
    return p.Hello(session, 0, 0.0, ["text", "audio", "video"], window, **extra)


def features(session, seq, modality, x):
    return p.Features(session, seq, float(seq), modality, x.astype(np.float32), None)


def run(coro):
    return asyncio.run(coro)


def test_window_policy_predicts_after_every_features_message_as_forward_does():
    front, model = make_frontend()
    rng = np.random.default_rng(0)
    xs = {m: rng.standard_normal((4 + i, d)) for i, (m, d) in enumerate(SIZES.items())}
    sent = [hello()] + [features("s", i + 1, m, xs[m]) for i, m in enumerate(["audio", "text", "video"])]
    replies = run(exchange(front, sent))
    assert [type(r) for r in replies] == [p.Welcome, p.Prediction, p.Prediction, p.Prediction]
    predictions = replies[1:]
    assert [r.modalities for r in predictions] == [["audio"], ["audio", "text"], ["audio", "text", "video"]]
    assert [r.seq for r in predictions] == [1, 2, 3] and predictions[0].gate == 0 and predictions[1].gate > 0
    expected = model({m: torch.from_numpy(x).float()[None] for m, x in xs.items()}, order=["audio", "text", "video"])
    assert_close(torch.tensor([r.value for r in predictions]), expected.step_predictions[0])


def test_segment_policy_fuses_each_modality_once_at_segment_end_then_restarts():
    front, model = make_frontend()
    rng = np.random.default_rng(1)
    a1, a2, t = rng.standard_normal((3, 5)), rng.standard_normal((4, 5)), rng.standard_normal((6, 12))
    sent = [hello(window="segment"), features("s", 1, "text", t), features("s", 2, "audio", a1),
            features("s", 3, "audio", a2), p.SegmentEnd("s", 4, 4.0), features("s", 5, "text", t),
            p.SegmentEnd("s", 6, 6.0)]
    replies = [r for r in run(exchange(front, sent)) if isinstance(r, p.Prediction)]
    assert [(r.segment, r.step, r.modality) for r in replies] == [(0, 1, "text"), (0, 2, "audio"), (1, 1, "text")]
    whole = model({"text": torch.from_numpy(t).float()[None], "audio": torch.from_numpy(np.concatenate([a1, a2])).float()[None]},
                  order=["text", "audio"])
    assert_close(torch.tensor([replies[0].value, replies[1].value]), whole.step_predictions[0])
    assert replies[2].value == pytest.approx(replies[0].value, abs=1e-6)  # a fresh context


def test_bad_input_gets_an_error_and_the_session_goes_on():
    front, _ = make_frontend()
    x = np.ones((2, 12), np.float32)
    sent = [
        b"\x93not msgpack at all",
        hello(),
        features("s", 1, "text", np.ones((2, 7))),  # wrong feature size
        features("nobody", 2, "text", x),  # unknown session
        features("s", 1, "text", x),  # seq going backwards... 1 again
        features("s", 2, "speech", np.ones((2, 3))),  # a modality not opened
        features("s", 3, "text", x),  # and a good one still works
    ]
    replies = run(exchange(front, sent))
    errors = [r for r in replies if isinstance(r, p.Error)]
    assert [e.code for e in errors] == [p.BAD_MSGPACK, p.BAD_SHAPE, p.UNKNOWN_SESSION, p.SEQ_BACKWARDS, p.UNKNOWN_MODALITY]
    assert "this model takes 12" in errors[1].message and "send hello first" in errors[2].message
    assert isinstance(replies[-1], p.Prediction) and replies[-1].seq == 3


def test_raw_media_without_extractors_is_refused_clearly():
    front, _ = make_frontend()
    replies = run(exchange(front, [hello(), p.Text("s", 1, 1.0, "hello there", True)]))
    assert replies[-1].code == p.BAD_STATE and "send features" in replies[-1].message


def test_session_limit_and_bye_and_idle_timeout():
    clock = Clock()
    front, _ = make_frontend(clock=clock, max_sessions=2, idle_timeout_s=10)

    async def scenario():
        opened = await exchange(front, [hello("a"), hello("b"), hello("c")])
        bye = await exchange(front, [p.Bye("a", 1, 1.0)])
        clock.now = 11.0
        await front.reap_idle()
        return opened, bye + await exchange(front, [])

    opened, later = run(scenario())
    assert [type(r) for r in opened] == [p.Welcome, p.Welcome, p.Error] and opened[2].code == p.BUSY
    closed = [r for r in later if isinstance(r, p.Closed)]
    assert [(c.session, c.reason) for c in closed] == [("a", "bye"), ("b", "idle_timeout")]
    assert front.sessions == {}


def test_many_sessions_on_several_shards_keep_their_contexts_apart():
    front, model = make_frontend(shards=3)
    rng = np.random.default_rng(2)
    data = {f"s{i}": {m: rng.standard_normal((3 + i, d)) for m, d in SIZES.items()} for i in range(12)}
    sent = [hello(s) for s in data]
    for k, m in enumerate(["video", "text", "audio"]):
        sent += [features(s, k + 1, m, xs[m]) for s, xs in data.items()]
    replies = [r for r in run(exchange(front, sent)) if isinstance(r, p.Prediction)]
    assert len(replies) == 36
    for s, xs in data.items():
        served = torch.tensor([r.value for r in replies if r.session == s])
        expected = model({m: torch.from_numpy(x).float()[None] for m, x in xs.items()}, order=["video", "text", "audio"])
        assert_close(served, expected.step_predictions[0])


class SlowExtractors:
    """Extraction that waits until released, so chunks pile up as behind a slow extractor."""

    def __init__(self):
        self.release = asyncio.Event()
        self.seen = []

    async def extract(self, modality, session, chunk):
        await self.release.wait()
        self.seen.append((modality, chunk))
        size = {"video": 8, "audio": 5, "text": 12}[modality]
        return np.ones((1, size), np.float32), np.ones(1, bool)

    async def flush(self, modality, session):
        return np.zeros((0, 8 if modality == "video" else 5), np.float32), np.zeros(0, bool)

    async def close(self, session):
        pass


def test_late_video_keeps_the_newest_frame_audio_drops_the_oldest_text_drops_nothing():
    front, _ = make_frontend(max_audio_chunks=3)
    slow = SlowExtractors()
    front.policy.extractors = slow
    header = b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x02\x00\x04\x03" + bytes(9)  # a JPEG's frame header: 4x2
    jpeg = header + bytes(16)
    pcm = np.zeros(160, np.int16)

    async def scenario():
        await exchange(front, [hello(window="segment")])
        sent = [p.Video("s", 1, 1.0, jpeg)]  # taken by the worker at once, then it waits
        sent += [p.Video("s", 2 + i, 2.0, header + bytes([i]) * 16) for i in range(5)]  # only the last survives
        sent += [p.Audio("s", 10 + i, 3.0, pcm + i, 16000) for i in range(6)]  # 3 fit: the 3 oldest go
        sent += [p.Text("s", 20 + i, 4.0, f"phrase {i}", True) for i in range(4)]  # all kept
        replies = await exchange(front, sent)
        slow.release.set()
        return replies + await exchange(front, [p.Bye("s", 30, 5.0)])

    replies = run(scenario())
    closed = replies[-1]
    assert isinstance(closed, p.Closed) and closed.stats["drops_video"] == 4 and closed.stats["drops_audio"] == 3
    kinds = [m for m, _ in slow.seen]
    assert kinds == ["video", "video", "audio", "audio", "audio", "text", "text", "text", "text"]
    assert slow.seen[1][1] == header + bytes([4]) * 16  # the newest frame
    assert [int(chunk.samples[0]) for m, chunk in slow.seen if m == "audio"] == [3, 4, 5]  # the newest audio


def test_a_session_answers_only_the_connection_that_opened_it():
    front, _ = make_frontend()

    async def scenario():
        await exchange(front, [hello("mine")], identity=b"owner")
        return await exchange(front, [features("mine", 1, "text", np.ones((2, 12)))], identity=b"intruder")

    (reply,) = run(scenario())
    assert reply.code == p.UNKNOWN_SESSION and front.sessions["mine"].last_seq == 0


def test_stats_need_no_session_and_count_what_happened():
    front, _ = make_frontend()
    x = np.ones((2, 12), np.float32)

    async def scenario():
        await exchange(front, [hello(), features("s", 1, "text", x), features("s", 2, "text", np.ones((2, 3)))])
        return await exchange(front, [p.StatsRequest("monitor", 0, 0.0)])

    (stats,) = run(scenario())
    assert isinstance(stats, p.ServerStats) and stats.session == "monitor"
    assert stats.numbers["active_sessions"] == 1 and stats.numbers["steps"] == 1 and stats.numbers["errors"] == 1


def test_a_failure_inside_the_server_answers_that_message_and_the_server_goes_on():
    front, _ = make_frontend()

    async def broken_open(*args):
        raise RuntimeError("disk on fire")

    working_open, front.fusion.open = front.fusion.open, broken_open
    replies = run(exchange(front, [hello("a")]))
    assert replies[0].code == p.INTERNAL and "disk on fire" in replies[0].message
    assert "a" not in front.sessions
    front.fusion.open = working_open
    assert isinstance(run(exchange(front, [hello("b")]))[0], p.Welcome)
