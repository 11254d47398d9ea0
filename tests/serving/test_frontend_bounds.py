"""Hostile and heavy clients at the front-end: every refusal answered, failures isolated, memory bounded."""

import asyncio

import numpy as np

from grf_stream.serving import protocol as p
from grf_stream.serving.engine import StepRequest
from test_frontend import SIZES, Clock, exchange, features, hello, make_frontend, run

JPEG_HEADER = b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x02\x00\x04\x03" + bytes(9)  # a JPEG's frame header: 4x2


class TextRows:
    """Text extraction as one row per character, so a test can see which text a step holds."""

    async def extract(self, modality, session, chunk):
        rows = np.array([[float(ord(c))] * SIZES["text"] for c in chunk], np.float32)
        return rows, np.ones(len(rows), bool)

    async def flush(self, modality, session):
        return np.zeros((0, SIZES[modality]), np.float32), np.zeros(0, bool)

    async def close(self, session):
        pass


class Blocked(TextRows):
    """Extraction that waits until released, so a session's messages pile up."""

    def __init__(self):
        self.release = asyncio.Event()

    async def extract(self, modality, session, chunk):
        await self.release.wait()
        return np.ones((1, SIZES[modality]), np.float32), np.ones(1, bool)


def test_a_message_over_the_size_limit_is_answered_and_the_session_goes_on():
    front, _ = make_frontend(limits=p.Limits(max_message_bytes=4096))
    big = features("s", 1, "audio", np.zeros((1000, 5)))  # 20 kB
    replies = run(exchange(front, [hello(), big, features("s", 2, "audio", np.zeros((3, 5)))]))
    assert [type(r) for r in replies] == [p.Welcome, p.Error, p.Prediction], replies
    assert replies[1].code == p.TOO_LARGE and "limit is 4096" in replies[1].message
    assert replies[0].limits["max_message_bytes"] == 4096  # the welcome tells the limit in force
    assert replies[2].seq == 2


def test_a_step_never_carries_more_rows_than_the_limit():
    front, _ = make_frontend(limits=p.Limits(max_step_rows=10))
    sent = [hello(window="segment"), features("s", 1, "audio", np.zeros((6, 5))), features("s", 2, "audio", np.zeros((6, 5))),
            p.SegmentEnd("s", 3, 3.0)]
    replies = run(exchange(front, sent))
    errors = [r for r in replies if isinstance(r, p.Error)]
    assert [(e.code, e.seq) for e in errors] == [(p.TOO_LARGE, 2)] and "segment_end" in errors[0].message
    assert [r.modality for r in replies if isinstance(r, p.Prediction)] == ["audio"]  # the 6 rows that fit


def test_a_partial_transcript_is_replaced_not_added_to():
    front, _ = make_frontend()
    front.policy.extractors = TextRows()
    sent = [hello(), p.Text("s", 1, 1.0, "I lik", False), p.Text("s", 2, 1.1, "I liked", False),
            p.Text("s", 3, 1.2, "I liked it", True)]
    steps = []
    fuse = front.fusion.step

    async def record(shard, requests):
        steps.extend(requests)
        return await fuse(shard, requests)

    front.fusion.step = record
    replies = run(exchange(front, sent))
    assert [type(r) for r in replies] == [p.Welcome, p.Prediction]
    assert len(steps) == 1 and "".join(chr(int(row[0])) for row in steps[0].features) == "I liked it"


def test_a_phrase_over_the_row_limit_is_refused_and_the_session_goes_on():
    front, _ = make_frontend(limits=p.Limits(max_phrase_rows=8))
    front.policy.extractors = TextRows()
    sent = [hello(), p.Text("s", 1, 1.0, "!" * 9, True), p.Text("s", 2, 1.1, "all good", True)]
    replies = run(exchange(front, sent))
    assert [type(r) for r in replies] == [p.Welcome, p.Error, p.Prediction], replies
    assert replies[1].code == p.TOO_LARGE and "at most 8" in replies[1].message and "phrase by phrase" in replies[1].message
    assert replies[2].seq == 2


def test_a_failing_step_fails_alone_and_every_copy_stays_in_step():
    front, _ = make_frontend()
    service = front.fusion.backend.services[0]

    async def scenario():
        await exchange(front, [hello("good"), hello("bad")])
        batch = [StepRequest("good", 1, "audio", np.ones((3, 5), np.float32), np.ones(3, bool)),
                 StepRequest("bad", 1, "audio", np.full((3, 5), np.nan, np.float32), np.ones(3, bool))]
        original = service._run_group

        def fail_on_nan(group):
            if any(np.isnan(r.features).any() for r in group):
                raise FloatingPointError("a NaN reached the model")
            return original(group)

        service._run_group = fail_on_nan
        await front.batcher.run_batch(0, batch)
        replies = []
        while not front.outbox.empty():
            replies.append(front.outbox.get_nowait()[1])
        return replies

    replies = run(scenario())
    assert {(type(r), r.session) for r in replies} == {(p.Prediction, "good"), (p.Error, "bad")}
    copy = front.fusion.copy(0, "good")
    assert service.states["good"].step == 1 and copy.step == 1
    np.testing.assert_array_equal(service.states["good"].context.numpy(), copy.context)
    assert service.states["bad"].step == 0 and service.states["bad"].context is None


def test_a_chunk_that_completes_several_windows_times_each_from_its_arrival():
    clock = Clock()
    front, _ = make_frontend(clock=clock)

    async def scenario():
        await exchange(front, [hello()])
        session = front.sessions["s"]
        clock.now = 1.0
        await front.policy.rows(session, "audio", 5, np.zeros((250, 5), np.float32), np.ones(250, bool))  # two 1 s windows
        clock.now = 1.2
        return await exchange(front, [])

    replies = [r for r in run(scenario()) if isinstance(r, p.Prediction)]
    assert [r.seq for r in replies] == [5, 5]
    assert all(abs(r.latency_ms - 200) < 1e-6 for r in replies), [r.latency_ms for r in replies]


def test_an_audio_flood_holds_a_bounded_number_of_chunks_and_bytes():
    front, _ = make_frontend(max_audio_chunks=4)
    blocked = Blocked()
    front.policy.extractors = blocked
    chunk = np.zeros(16000 * 4, np.int16)  # 4 s of audio, 128 kB

    async def scenario():
        await exchange(front, [hello()])
        session = front.sessions["s"]
        for seq in range(1, 201):
            await front.handle(b"client", p.encode(p.Audio("s", seq, float(seq), chunk, 16000)))
        held = (len(session.waiting["audio"]), session.inbox.qsize(), session.waiting_bytes)
        blocked.release.set()
        return held, await exchange(front, [p.Bye("s", 300, 300.0)])

    (chunks, waiting, held_bytes), replies = run(scenario())
    assert chunks == 4 and waiting <= 5 and held_bytes <= 4 * chunk.nbytes
    closed = replies[-1]
    assert isinstance(closed, p.Closed) and closed.stats["drops_audio"] >= 195


def test_a_session_over_its_byte_budget_is_told_busy_and_the_others_go_on():
    front, _ = make_frontend(max_waiting_bytes=100_000)
    blocked = Blocked()
    front.policy.extractors = blocked
    big = np.zeros((1500, 12), np.float32)  # 72 kB of text features each

    async def scenario():
        replies = await exchange(front, [hello("heavy"), hello("light")])
        await front.handle(b"client", p.encode(p.Text("heavy", 1, 1.0, "blocks the worker", True)))
        for seq in (2, 3, 4):
            await front.handle(b"client", p.encode(p.Features("heavy", seq, float(seq), "text", big, None)))
        blocked.release.set()
        return replies + await exchange(front, [features("light", 1, "audio", np.ones((3, 5)))])

    replies = run(scenario())
    busy = [r for r in replies if isinstance(r, p.Error)]
    assert [(r.code, r.session) for r in busy] == [(p.BUSY, "heavy"), (p.BUSY, "heavy")]
    assert "send slower" in busy[0].message
    assert any(isinstance(r, p.Prediction) and r.session == "light" for r in replies)


def test_hello_does_not_hold_up_the_other_sessions_while_the_fusion_side_is_slow():
    front, _ = make_frontend()
    opened = asyncio.Event()
    open_session = front.fusion.open

    async def slow_open(shard, session, state):
        if session == "slow":
            await opened.wait()
        await open_session(shard, session, state)

    front.fusion.open = slow_open

    async def scenario():
        await exchange(front, [hello("fast")])
        await asyncio.wait_for(front.handle(b"client", p.encode(hello("slow"))), 1)  # returns at once
        replies = await exchange(front, [features("fast", 1, "audio", np.ones((3, 5))),
                                         features("slow", 1, "audio", np.ones((3, 5)))])
        opened.set()
        return replies + await exchange(front, [])

    replies = [(type(r), r.session) for r in run(scenario())]
    assert replies.index((p.Prediction, "fast")) < replies.index((p.Welcome, "slow"))
    assert replies.index((p.Welcome, "slow")) < replies.index((p.Prediction, "slow"))


def test_a_jpeg_declaring_huge_sides_is_refused_before_any_decoding():
    front, _ = make_frontend()
    front.policy.extractors = Blocked()  # would hang if the frame reached extraction
    bomb = JPEG_HEADER[:7] + (8000).to_bytes(2, "big") + (8000).to_bytes(2, "big") + JPEG_HEADER[11:] + bytes(600)
    replies = run(exchange(front, [hello(), p.Video("s", 1, 1.0, bomb)]))
    assert [(type(r), getattr(r, "code", None)) for r in replies] == [(p.Welcome, None), (p.Error, p.TOO_LARGE)]


def test_a_connection_flooding_bad_messages_gets_a_bounded_number_of_error_replies():
    from grf_stream.serving.replies import ERROR_BURST

    front, _ = make_frontend()

    async def scenario():
        for i in range(ERROR_BURST + 50):
            await front.handle(b"flood", b"\xc1 not msgpack")
        await front.handle(b"other", b"\xc1 not msgpack")
        replies = []
        while not front.outbox.empty():
            replies.append(front.outbox.get_nowait())
        return replies

    replies = run(scenario())
    assert sum(1 for identity, _ in replies if identity == b"flood") == ERROR_BURST
    assert sum(1 for identity, _ in replies if identity == b"other") == 1  # other connections are answered
    numbers = front.replies.numbers.now(len(front.sessions))
    assert numbers["errors_unanswered"] == 50 and numbers["errors"] == ERROR_BURST + 51


def test_a_connection_throwing_most_of_what_it_sends_away_is_read_more_slowly():
    from grf_stream.serving.replies import DISCARD_BURST, DISCARD_PAUSE_S, DISCARDS_PER_S

    clock = Clock()
    front, _ = make_frontend(clock=clock)

    async def scenario():
        pauses = [await front.handle(b"flood", b"\xc1 not msgpack") for _ in range(DISCARD_BURST + 1)]
        other = await front.handle(b"other", b"\xc1 not msgpack")
        clock.now += 10 / DISCARDS_PER_S  # ten discards' worth of refill
        after_refill = [await front.handle(b"flood", b"\xc1 not msgpack") for _ in range(11)]
        return pauses, other, after_refill

    pauses, other, after_refill = run(scenario())
    assert pauses[:DISCARD_BURST - 1] == [0.0] * (DISCARD_BURST - 1)  # within its budget: read at full speed
    assert pauses[DISCARD_BURST:] == [DISCARD_PAUSE_S]
    assert other == 0.0  # another connection is not slowed
    assert after_refill[:9] == [0.0] * 9 and after_refill[-1] == DISCARD_PAUSE_S


class Rates(TextRows):
    """Audio extraction that records the sample rate of every chunk it is given."""

    def __init__(self):
        self.rates = []

    async def extract(self, modality, session, chunk):
        self.rates.append(chunk.sample_rate)
        return np.zeros((0, SIZES[modality]), np.float32), np.zeros(0, bool)


def test_audio_is_at_the_rate_the_hello_named():
    front, _ = make_frontend()
    rates = Rates()
    front.policy.extractors = rates
    pcm = np.zeros(800, np.int16)
    sent = [hello(sample_rate=8000), p.Audio("s", 1, 1.0, pcm), p.Audio("s", 2, 1.1, pcm, 16000),
            p.Audio("s", 3, 1.2, pcm, 8000)]
    replies = run(exchange(front, sent))
    errors = [r for r in replies if isinstance(r, p.Error)]
    assert [(e.code, e.seq) for e in errors] == [(p.BAD_FIELD, 2)], errors
    assert "hello said sample_rate 8000" in errors[0].message
    assert rates.rates == [8000, 8000]  # the chunk without a rate and the one at the hello's rate


class SlowClose(TextRows):
    """Extractors whose close waits until released (busy with the closing session's backlog)."""

    def __init__(self):
        self.release = asyncio.Event()

    async def close(self, session):
        await self.release.wait()


def test_a_close_waiting_on_busy_extractors_holds_up_no_other_session():
    front, _ = make_frontend()
    slow = SlowClose()
    front.policy.extractors = slow

    async def scenario():
        replies = await exchange(front, [hello("a"), hello("b"), p.Bye("a", 1, 1.0),
                                         features("b", 1, "audio", np.zeros((3, 5)))])
        slow.release.set()
        await asyncio.sleep(0.01)
        return replies

    replies = run(scenario())
    assert [(type(r), r.session) for r in replies if not isinstance(r, p.Welcome)] == [
        (p.Closed, "a"), (p.Prediction, "b")], replies


def test_audio_faster_than_the_media_budget_is_dropped_on_arrival_and_counted():
    clock = Clock()
    front, _ = make_frontend(clock=clock, max_media_speed=2.0, media_burst_s=10.0)
    rates = Rates()
    front.policy.extractors = rates
    second = np.zeros(16000, np.int16)

    async def scenario():
        await exchange(front, [hello()])
        for seq in range(1, 16):  # 15 s of audio at once: the 10 s burst passes, the rest is dropped
            await front.handle(b"client", p.encode(p.Audio("s", seq, float(seq), second)))
        clock.now = 2.0  # 2 s later, at 2x real time: room for 4 s more
        for seq in range(16, 22):
            await front.handle(b"client", p.encode(p.Audio("s", seq, float(seq), second)))
        return await exchange(front, [p.Bye("s", 30, 30.0)])

    replies = run(scenario())
    closed = [r for r in replies if isinstance(r, p.Closed)][0]
    assert len(rates.rates) == 14 and closed.stats["drops_audio"] == 7, (len(rates.rates), closed.stats)
