"""The server for real: `python -m grf_stream.serve` as a process, the client streaming real media."""

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MEDIA = ROOT.parent / "shared" / "data" / "media" / "Oz06ZWiO20M_6.mp4"
LABELS = ROOT.parent / "shared" / "data" / "mosi" / "mosi_labels_transcripts.csv"
needs_media = pytest.mark.skipif(not MEDIA.exists(), reason="needs ../shared/data (the CMU-MOSI clip and CSV)")


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    return tmp_path_factory.mktemp("serve_board")


@pytest.fixture(scope="module")
def server(board, start_server):
    """The server process, started as a user starts it, stopped at the end."""
    with start_server("idle_timeout_s=20", f"tensorboard_dir={board}", "stats_every_s=0.5") as address:
        yield address


def client(server, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "grf_stream.client", "--server", server, "--json", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def replies(result):
    import json

    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@needs_media
def test_streaming_the_mosi_clip_gives_a_prediction_after_every_step_and_ends_cleanly(server, tmp_path):
    row = mosi_row("Oz06ZWiO20M_6")
    transcript = tmp_path / "transcript.csv"
    transcript.write_text(f'start,end,text\n0,{float(row["end"]) - float(row["start"]):.2f},"{row["text"]}"\n')
    result = client(server, "--video", str(MEDIA), "--transcript", str(transcript), "--speed", "2",
                    "--session", "mosi")
    assert result.returncode == 0, result.stdout + result.stderr
    got = replies(result)
    assert got[0]["type"] == "welcome" and got[-1] == {**got[-1], "type": "closed", "reason": "bye"}
    assert got[0]["feature_spec"]["text"]["size"] == 384  # what the served model was trained on
    predictions = [r for r in got if r["type"] == "prediction"]
    assert {"text", "audio", "video"} <= set(predictions[-1]["modalities"])  # the context holds all three
    assert [p["step"] for p in predictions] == list(range(1, len(predictions) + 1))  # one after every step
    stats = got[-1]["stats"]
    assert stats["steps"] == len(predictions)
    if not any(key.startswith("drops_") for key in stats):  # a loaded machine may drop late chunks, and says so
        assert len(predictions) >= 10, stats  # 7.5 s in 1 s windows of audio and video, and the phrase
    assert not [r for r in got if r["type"] == "error"]


@needs_media
def test_the_client_says_what_each_prediction_rests_on_and_that_no_words_came_yet(server, tmp_path):
    transcript = tmp_path / "t.csv"
    transcript.write_text('start,end,text\n0,3.5,"AND SUCKER PUNCH IS A FAILER"\n')
    result = subprocess.run([sys.executable, "-m", "grf_stream.client", "--server", server, "--video", str(MEDIA),
                             "--transcript", str(transcript), "--speed", "2"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if " sentiment " in line]
    first_text = next(i for i, line in enumerate(lines) if " text " in line)
    assert first_text > 0, lines  # 3.5 s of audio and video windows come first
    assert all("; no words yet" in line for line in lines[:first_text]), lines
    assert any(line.endswith("face + voice; no words yet") or line.endswith("voice + face; no words yet")
               for line in lines[:first_text]), lines  # once both windows came
    assert all(line.endswith(" + words") for line in lines[first_text:]), lines  # words fused last


@needs_media
def test_segment_policy_fuses_each_modality_once(server, tmp_path):
    transcript = tmp_path / "t.csv"
    transcript.write_text('start,end,text\n0,7.4,"AND SUCKER PUNCH IS A FAILER"\n')
    result = client(server, "--video", str(MEDIA), "--transcript", str(transcript), "--speed", "4",
                    "--window", "segment")
    predictions = [r for r in replies(result) if r["type"] == "prediction"]
    assert sorted(p["modality"] for p in predictions) == ["audio", "text", "video"]
    assert [p["gate"] == 0 for p in predictions] == [True, False, False]


@needs_media
def test_the_served_prediction_of_the_mosi_clip_is_its_offline_evaluation(server, tmp_path):
    """The packaged model through the server equals the same model over the offline extraction path
    (what `python -m grf_stream.extract` stores) evaluated by the trainer's code, in the served order."""
    from grf_stream.data.store import sample_from_arrays
    from grf_stream.default_model import load_serving_model
    from grf_stream.features.offline import SampleExtractor, SampleJob
    from trainer.evaluate import evaluate_model

    row = mosi_row("Oz06ZWiO20M_6")
    transcript = tmp_path / "transcript.csv"
    transcript.write_text(f'start,end,text\n0,7.38,"{row["text"]}"\n')
    # At real-time speed on warm extractors, so that no frame is dropped as late: the offline path
    # reads every one.
    client(server, "--video", str(MEDIA), "--speed", "4", "--window", "segment")
    for _ in range(3):  # a loaded machine may still drop a late frame (counted): the comparison needs them all
        result = client(server, "--video", str(MEDIA), "--transcript", str(transcript), "--window", "segment")
        closed = replies(result)[-1]
        if not any(k.startswith("drops") and v for k, v in closed["stats"].items()):
            break
    assert not any(k.startswith("drops") and v for k, v in closed["stats"].items()), closed["stats"]
    served = [r for r in replies(result) if r["type"] == "prediction"]
    order = [p["modality"] for p in served]
    assert sorted(order) == ["audio", "text", "video"], result.stdout + result.stderr

    model, _, _ = load_serving_model()
    arrays = SampleExtractor(["text", "audio", "video"])(SampleJob(row["id"], row["text"], str(MEDIA), str(MEDIA), None, None))
    offline = evaluate_model(model, [sample_from_arrays(row["id"], float(row["label"]), arrays)], order)
    # The wire carries JPEG frames and 16-bit audio, the offline path decoded pixels and floats:
    # they differ by a few thousandths.
    assert [p["value"] for p in served] == pytest.approx(offline.step_predictions[0].tolist(), abs=0.01)


def mosi_row(sample_id: str) -> dict:
    with open(LABELS, newline="") as f:
        return next(r for r in csv.DictReader(f) if r["id"] == sample_id)


def test_the_server_writes_its_numbers_to_tensorboard(server, board):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    client(server, "--transcript", str(write_transcript(board)), "--speed", "10")
    time.sleep(1.5)
    tags = EventAccumulator(str(board)).Reload().Tags()["scalars"]
    for tag in ("serve/steps_per_s", "serve/active_sessions", "serve/step_latency_p50_ms", "serve/step_latency_p99_ms"):
        assert tag in tags, tags


def write_transcript(folder):
    path = folder / "phrases.csv"
    path.write_text('start,end,text\n0,0.5,"I liked it"\n0.5,1.0,"but not the ending"\n')
    return path


def test_live_phrases_from_stdin(server):
    result = subprocess.run([sys.executable, "-m", "grf_stream.client", "--server", server, "--json", "--transcript-stdin"],
                            cwd=ROOT, input="what a wonderful film\n\nbut the ending was weak\n", capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    predictions = [r for r in replies(result) if r["type"] == "prediction"]
    assert [(p["step"], p["modality"]) for p in predictions] == [(1, "text"), (2, "text")]


@needs_media
def test_live_capture_paths_with_files_standing_in_for_the_camera_and_microphone(server):
    """The --webcam and --mic code (OpenCV capture, FFmpeg capture through PyAV, resampling, chunking)
    on the real clip and recording: this machine has no camera or microphone. Files are read faster
    than real time, so the late-data rules drop frames and chunks; the session still ends cleanly."""
    speech = MEDIA.with_name("03bSnISJMiM_1.wav")
    result = client(server, "--webcam", str(MEDIA), "--mic", str(speech), "--mic-format", "wav", "--window", "segment")
    assert result.returncode == 0, result.stdout + result.stderr
    got = replies(result)
    predictions = [r for r in got if r["type"] == "prediction"]
    assert sorted(p["modality"] for p in predictions) == ["audio", "video"]
    assert got[-1]["type"] == "closed" and got[-1]["reason"] == "bye"


def test_a_missing_camera_or_microphone_is_a_clear_error(server):
    result = client(server, "--webcam", "/nonexistent/camera")
    assert result.returncode != 0 and "cannot open webcam /nonexistent/camera" in result.stderr
    result = client(server, "--mic", "no-such-device", "--mic-format", "alsa")
    assert result.returncode != 0 and "cannot open microphone 'no-such-device'" in result.stderr


def test_client_stats_prints_the_live_numbers(server):
    result = subprocess.run([sys.executable, "-m", "grf_stream.client", "--server", server, "--stats", "--count", "2",
                             "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    import json

    numbers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(numbers) == 2 and numbers[-1]["steps"] > 0  # earlier tests of this module streamed through it
    assert {"active_sessions", "steps_per_s", "errors", "drops"} <= set(numbers[-1])


def send_and_collect(server, messages, replies_wanted: int) -> list:
    """Messages from one plain DEALER socket, as any client would send them; the replies that came back."""
    import zmq

    from grf_stream.serving import protocol as p

    with zmq.Context() as context:
        sock = context.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(server)
        for message in messages:
            sock.send(p.encode(message))
        replies = []
        while len(replies) < replies_wanted and sock.poll(60_000):
            replies.append(p.decode_reply(sock.recv()))
        sock.close()
    return replies


def test_a_jpeg_that_does_not_decode_gets_an_error_and_the_session_goes_on(server):
    from grf_stream.serving import protocol as p

    header = b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x02\x00\x04\x03" + bytes(9)  # a JPEG's frame header
    replies = send_and_collect(server, [p.Hello("bad-jpeg", 0, 0.0, ["video", "text"], "window"),
                                        p.Video("bad-jpeg", 1, 0.1, header + b" this is not a picture"),
                                        p.Text("bad-jpeg", 2, 0.2, "still here", True)], 3)
    assert [type(r) for r in replies] == [p.Welcome, p.Error, p.Prediction], replies
    assert replies[1].code == p.BAD_JPEG and replies[1].seq == 1 and "JPEG" in replies[1].message


LIVE_VIDEOS = ("iiK8YX8oH1E", "dq3Nf_lMPnE")  # the two shortest test videos: 77 s and 91 s


def timed_text_store(root: Path, video_ids) -> Path:
    """A feature store of these videos' transcripts with their times, written as
    `python -m grf_stream.extract --modalities text` writes it (the same extractor, no Ray)."""
    from grf_stream.data import FeatureStore
    from grf_stream.features.offline import MediaIndex, SampleExtractor, plan, read_labels

    rows = [row for row in read_labels(LABELS) if row.video_id in video_ids]
    jobs, skipped = plan(rows, MediaIndex(None), ["text"])
    assert not skipped
    extractor = SampleExtractor(["text"])
    store = FeatureStore.create(root, extractor.spec)
    for job in jobs:
        store.write_features(job.id, extractor(job))
    store.write_index([row.index_row() for row in rows])
    return root


def stream_as_features(server, streams, timeout_s=120):
    """Each stream as one session of `features` messages with the client's default settings; the
    prediction after every step, per stream."""
    import zmq

    from grf_stream.serving import protocol as p

    predictions = {s.name: [] for s in streams}
    with zmq.Context() as context:
        sockets = {}
        for stream in streams:
            sock = sockets[stream.name] = context.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(server)
            sock.send(p.encode(p.Hello(stream.name, 0, 0.0, ["text", "audio", "video"], "window")))
            for seq, step in enumerate(stream.steps, start=1):
                sock.send(p.encode(p.Features(stream.name, seq, step.at, step.modality, step.features, step.mask)))
            sock.send(p.encode(p.Bye(stream.name, len(stream.steps) + 1, stream.seconds)))
        poller = zmq.Poller()
        for sock in sockets.values():
            poller.register(sock, zmq.POLLIN)
        open_sessions, deadline = set(sockets), time.time() + timeout_s
        while open_sessions and time.time() < deadline:
            for sock, _ in poller.poll(1000):
                reply = p.decode_reply(sock.recv())
                assert not isinstance(reply, p.Error), reply
                if isinstance(reply, p.Prediction):
                    predictions[reply.session].append(reply.value)
                elif isinstance(reply, p.Closed):
                    open_sessions.discard(reply.session)
        for sock in sockets.values():
            sock.close()
    assert not open_sessions, f"no closed reply from {open_sessions} in {timeout_s} s"
    return predictions


@needs_media
def test_two_test_videos_streamed_as_features_get_the_live_reports_predictions(server, tmp_path):
    import numpy as np

    from grf_stream.checkpoint import load_model
    from grf_stream.default_model import SHIPPED
    from trainer.live_report import live_streams, replay

    store = timed_text_store(tmp_path / "store", LIVE_VIDEOS)
    streams = live_streams(store, "test", MEDIA.parent)
    assert sorted(s.name for s in streams) == sorted(LIVE_VIDEOS)
    expected = replay(load_model(SHIPPED)[0], streams)
    served = stream_as_features(server, streams)
    for stream, values in zip(streams, expected):
        assert len(served[stream.name]) == len(stream.steps) > 100
        np.testing.assert_allclose(served[stream.name], values, atol=1e-4, rtol=0)


def test_a_message_over_the_limit_is_answered_and_its_connection_and_session_survive(server):
    import numpy as np

    from grf_stream.serving import protocol as p

    replies = send_and_collect(server, [p.Hello("big", 0, 0.0, ["audio", "text"], "window"),
                                        p.Features("big", 1, 0.1, "audio", np.zeros((90_000, 26), np.float32), None),
                                        p.Text("big", 2, 0.2, "still here", True)], 3)  # the features: 9.4 MB
    # The oversized message is refused as it arrives, the welcome comes once the fusion side holds the
    # session: either may be first.
    assert sorted(type(r).__name__ for r in replies) == ["Error", "Prediction", "Welcome"], replies
    error, prediction = (next(r for r in replies if isinstance(r, kind)) for kind in (p.Error, p.Prediction))
    assert error.code == p.TOO_LARGE and "8388608" in error.message
    assert prediction.session == "big" and prediction.seq == 2 and replies[-1] is prediction
