"""One window policy: the steps the trainer builds for a stream are the steps the server makes of it."""

import asyncio
from collections import deque

import numpy as np
import pytest
import torch

from grf_stream.data import DistractorConfig, Distractors, FeatureSpec, ModalitySpec, Sample
from grf_stream.data.streams import MediaTrack, Utterance, build_stream
from grf_stream.model import GRF, GRFConfig
from grf_stream.serving import protocol as p
from grf_stream.serving.engine import FusionService, LocalFusion
from grf_stream.serving.frontend import FrontEnd, FrontEndConfig
from grf_stream.windows import cut, window_rows

SIZES = {"audio": 3, "video": 2, "text": 4}
RATES = {"audio": 10.0, "video": 5.0}  # rows per second


def test_cut_gives_whole_windows_and_the_rest_only_once_the_stream_has_ended():
    assert cut(11, 5, ended=False) == [slice(0, 5), slice(5, 10)]
    assert cut(11, 5, ended=True) == [slice(0, 5), slice(5, 10), slice(10, 11)]
    assert cut(10, 5, ended=True) == [slice(0, 5), slice(5, 10)] and cut(4, 5, ended=False) == []
    assert window_rows(0.5, 5.0) == 2 and window_rows(0.01, 30.0) == 1  # at least one row


class Recorded(LocalFusion):
    """The in-process fusion backend, remembering every step the front-end asked for."""

    def __init__(self, services):
        super().__init__(services)
        self.requests = []

    async def step(self, shard, requests):
        self.requests.extend(requests)
        return await super().step(shard, requests)


class Replay:
    """Extraction for a replayed stream: each chunk's rows are the next rows of its modality's timeline."""

    def __init__(self, rows: dict[str, deque]):
        self.rows = rows

    async def extract(self, modality, session, chunk):
        return self.rows[modality].popleft()

    async def flush(self, modality, session):
        return np.zeros((0, SIZES[modality]), np.float32), np.zeros(0, bool)

    async def close(self, session):
        pass


def a_stream(window_s):
    rng = np.random.default_rng(0)
    spec = FeatureSpec({m: ModalitySpec("fake", "1", SIZES[m], RATES[m]) for m in RATES})
    sequences = {m: [(rng.normal(size=(n, SIZES[m])).astype(np.float32), rng.random(n) > 0.2) for n in (13, 7)]
                 for m in RATES}
    track = MediaTrack(Distractors(sequences, spec, DistractorConfig(modalities=["audio", "video"])))
    phrases = [(0.5, 1.3, 2.0, 3), (1.3, 2.05, -1.0, 5), (2.5, 4.45, 0.5, 2)]
    utterances = [Utterance(Sample(f"v_{i}", label, {"text": rng.normal(size=(n, 4)).astype(np.float32)},
                                   {"text": np.ones(n, bool)}), start, end)
                  for i, (start, end, label, n) in enumerate(phrases)]
    return build_stream("v", utterances, track, window_s, 0.0, 4.6, {"audio": 3, "video": 11}), track


def chunks_of(stream, track):
    """The stream as a client sends it: every feature row of audio and video as it is captured (one
    chunk a row), each phrase at its end; chunks of the same moment in the track's order, text last."""
    rows = {m: [] for m in SIZES}
    events = []
    for step in stream.steps:
        if step.modality == "text":
            events.append((step.at, 2, "text"))
            rows["text"].append((step.features, step.mask))
            continue
        rate = RATES[step.modality]
        first = sum(len(f) for f, _ in rows[step.modality])
        for k in range(len(step.features)):
            rows[step.modality].append((step.features[k:k + 1], step.mask[k:k + 1]))
            events.append(((first + k + 1) / rate, track.modalities.index(step.modality), step.modality))
    events.sort(key=lambda e: e[:2])
    return [m for _, _, m in events], {m: deque(r) for m, r in rows.items()}


def message(modality, seq):
    if modality == "audio":
        return p.Audio("s", seq, 0.0, np.zeros(2, np.int16), 16000)
    if modality == "video":
        return p.Video("s", seq, 0.0, frame=np.zeros((2, 2, 3), np.uint8))
    return p.Text("s", seq, 0.0, "a phrase")


async def serve_stream(order, rows, window_s):
    model = GRF(GRFConfig(modalities=SIZES, d_model=16, num_layers=1, num_heads=2, d_ffn=32, dropout=0.0)).eval()
    fusion = Recorded([FusionService(model)])
    front = FrontEnd(SIZES, RATES, fusion, Replay(rows), FrontEndConfig())
    runner = asyncio.create_task(front.batcher.run_shard(0))
    await front.handle(b"c", p.encode(p.Hello("s", 0, 0.0, list(SIZES), "window", window_s=window_s)))
    for seq, modality in enumerate(order, start=1):
        await front.handle(b"c", p.encode(message(modality, seq)))
        while front.sessions["s"].inbox.qsize() or front.batcher.queued(0):  # one chunk at a time
            await asyncio.sleep(0.001)
    await asyncio.sleep(0.05)
    runner.cancel()
    return fusion.requests


@pytest.mark.parametrize("window_s", [0.5, 1.0])
def test_the_server_makes_the_training_streams_steps_of_the_same_stream(window_s):
    torch.manual_seed(0)
    stream, track = a_stream(window_s)
    order, rows = chunks_of(stream, track)
    served = asyncio.run(serve_stream(order, rows, window_s))
    assert [r.modality for r in served] == [s.modality for s in stream.steps]
    for request, step in zip(served, stream.steps):
        assert np.array_equal(request.features, step.features) and np.array_equal(request.mask, step.mask)
    audio = [len(r.features) for r in served if r.modality == "audio"]
    assert audio == [window_rows(window_s, RATES["audio"])] * (46 // window_rows(window_s, RATES["audio"]))
