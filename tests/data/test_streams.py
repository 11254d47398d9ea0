"""Live streams: timelines as the server cuts them, and batches of streams that change nothing."""

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from grf_stream.data import DistractorConfig, Distractors, FeatureSpec, FeatureStore, ModalitySpec, Sample
from grf_stream.data.streams import (MediaTrack, Stream, Stretch, Utterance, build_stream, collate_streams,
                                     stretch_stream, videos)
from grf_stream.model import GRF, GRFConfig

SIZES = {"audio": 3, "video": 2, "text": 4}
RATES = {"audio": 10.0, "video": 5.0}  # rows per second


def distractors(seed=0, vary=0.0):
    """Distractors over random sequences (two recordings per modality), without extracting media."""
    rng = np.random.default_rng(seed)
    spec = FeatureSpec({m: ModalitySpec("fake", "1", SIZES[m], RATES[m]) for m in RATES})
    sequences = {m: [(rng.normal(size=(n, SIZES[m])).astype(np.float32), rng.random(n) > 0.2) for n in (13, 7)]
                 for m in RATES}
    return Distractors(sequences, spec, DistractorConfig(modalities=["audio", "video"], vary=vary))


def utterance(i, start, end, label, rows=3, seed=0):
    rng = np.random.default_rng(seed + i)
    text = rng.normal(size=(rows, SIZES["text"])).astype(np.float32)
    return Utterance(Sample(f"v_{i}", label, {"text": text}, {"text": np.ones(rows, bool)}), start, end)


def test_a_stream_cuts_windows_as_the_server_does_and_each_phrase_comes_at_its_end():
    track = MediaTrack(distractors())
    utterances = [utterance(0, 0.5, 1.3, 2.0), utterance(1, 1.3, 2.05, -1.0)]
    stream = build_stream("v", utterances, track, 0.5, 0.0, 2.05, {"audio": 0, "video": 18})
    assert [(round(s.at, 2), s.modality, s.phrase) for s in stream.steps] == [
        (0.4, "video", -1), (0.5, "audio", -1),  # video: round(0.5 * 5) = 2 rows = 0.4 s; audio: 5 rows
        (0.8, "video", -1), (1.0, "audio", -1), (1.2, "video", -1), (1.3, "text", 0), (1.5, "audio", 0),
        (1.6, "video", 0), (2.0, "audio", 0), (2.0, "video", 0), (2.05, "text", 1)]
    audio = [s for s in stream.steps if s.modality == "audio"]
    assert all(len(s.features) == 5 for s in audio)
    loop = np.concatenate([r for r, _ in distractors().sequences["audio"]])  # 20 rows, looped
    assert np.array_equal(audio[-1].features, loop[np.arange(15, 20)])
    video = [s for s in stream.steps if s.modality == "video"]
    assert np.array_equal(video[1].features, np.concatenate([r for r, _ in distractors().sequences["video"]])[[0, 1]])
    assert stream.labels.tolist() == [2.0, -1.0] and stream.seconds == pytest.approx(2.05)


def test_a_training_stretch_keeps_real_times_but_shortens_long_intervals():
    track = MediaTrack(distractors())
    utterances = [utterance(0, 10.0, 11.0, 1.0), utterance(1, 31.0, 32.0, 0.0), utterance(2, 32.5, 33.0, -1.0)]
    stream = stretch_stream("v", utterances, 0, Stretch(3, 2.0, 1.0, 4.0), track, 1.0, np.random.default_rng(0))
    phrases = [round(s.at, 3) for s in stream.steps if s.modality == "text"]
    assert phrases == [3.0, 7.0, 8.0]  # from 8 s: 11 - 8; the 21 s from phrase to phrase became 4 s; then 1 s as it was
    assert stream.seconds == pytest.approx(9.0)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    config = GRFConfig(modalities=dict(SIZES), d_model=8, num_layers=1, num_heads=2, d_ffn=16, dropout=0.0,
                       init="learned", gfu="keep", order=["audio", "video", "text"])
    return GRF(config).eval()


def alone(model: GRF, stream: Stream) -> torch.Tensor:
    """One stream through the streaming primitives, step by step, as a session."""
    context, predictions = None, []
    for step in stream.steps:
        x, mask = torch.from_numpy(step.features)[None], torch.from_numpy(step.mask)[None]
        if context is None:
            context = model.init_context(x, mask, step.modality)
        else:
            context, _ = model.fuse_step(context, x, mask, step.modality)
        predictions.append(model.predict(context)[0])
    return torch.stack(predictions)


def test_a_batch_of_streams_gives_each_stream_what_it_gets_alone():
    track, rng = MediaTrack(distractors()), np.random.default_rng(3)
    utterances = [utterance(i, 2.0 * i + 0.3 * (i % 3), 2.0 * i + 1.5, float(i % 5) - 2, rows=2 + i % 4) for i in range(6)]
    streams = [stretch_stream("v", utterances, first, Stretch(count, lead, tail, 2.5), track, 0.7, rng)
               for first, count, lead, tail in ((0, 3, 0.0, 0.0), (1, 2, 3.0, 1.0), (2, 4, 1.2, 4.0), (5, 1, 0.4, 0.0))]
    batch = collate_streams(streams, text_weight=2.0)
    model = tiny_model()
    with torch.no_grad():
        out = model.fuse(batch.steps)
        for i, stream in enumerate(streams):
            assert len(batch.positions[i]) == len(stream.steps)
            assert_close(out.step_predictions[i, batch.positions[i]], alone(model, stream), atol=1e-5, rtol=1e-5)
    texts = batch.text & (batch.weights > 0)
    assert texts.sum() == sum(len(s.labels) for s in streams)  # every phrase is scored once
    assert set(batch.weights[texts].tolist()) == {2.0}
    first_phrase = [int(np.argmax(batch.text[i].numpy() & (batch.weights[i] > 0).numpy())) for i in range(4)]
    for i, k in enumerate(first_phrase):
        assert (batch.weights[i, :k] == 0).all()  # nothing is scored before a stream's first phrase
        assert batch.targets[i, k] == streams[i].labels[0]


def test_videos_need_timed_samples(tmp_path):
    store = FeatureStore.create(tmp_path, FeatureSpec({"text": ModalitySpec("fake", "1", 4, 0.0)}))
    store.write_features("a_1", {"text": np.ones((2, 4), np.float32)})
    store.write_index([{"id": "a_1", "split": "train", "label": 1.0}])
    samples = store.load_split("train")
    with pytest.raises(ValueError, match="no start/end times; a stream needs them: extract again"):
        videos(store, samples)
    store.write_index([{"id": "a_1", "split": "train", "label": 1.0, "video_id": "a", "start": 0.5, "end": 2.0}])
    assert [(u.start, u.end) for u in videos(store, samples)["a"]] == [(0.5, 2.0)]


def test_varied_windows_stray_from_the_recordings_as_another_device_would_and_only_when_asked():
    source = distractors(vary=0.5)
    track = MediaTrack(source)
    assert track.varied(np.random.default_rng(0), 0.0) is track  # as recorded
    other = track.varied(np.random.default_rng(0), 0.5)
    for m in ("audio", "video"):
        rows, changed = track.rows[m], other.rows[m]
        assert rows.shape == changed.shape and not np.allclose(rows, changed)
        # one change per feature for the whole track: each column is an affine map of the original
        for column in range(rows.shape[1]):
            slope, intercept = np.polyfit(rows[:, column], changed[:, column], 1)
            assert np.allclose(rows[:, column] * slope + intercept, changed[:, column], atol=1e-4)
        assert np.array_equal(other.masks[m], track.masks[m])
    sample = Sample("s", 1.0, {}, {})
    rng = np.random.default_rng(1)
    plain = source.attach(sample, np.random.default_rng(1), 1.0)
    strayed = source.attach(sample, rng, 1.0, vary=0.5)
    assert plain.features["audio"].shape == strayed.features["audio"].shape
    assert not np.allclose(plain.features["audio"], strayed.features["audio"])
    with pytest.raises(ValueError, match="vary=-1 must be >= 0"):
        DistractorConfig(vary=-1)
