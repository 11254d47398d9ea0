"""`python -m grf_stream.client`: stream media to a grf-stream server and print its predictions.

    python -m grf_stream.client --demo                                     # a packaged recording
    python -m grf_stream.client --video talk.mp4 --transcript talk.csv     # replayed in real time
    python -m grf_stream.client --audio speech.wav --transcript speech.csv --speed 4
    python -m grf_stream.client --signal pulse=wrist.csv --transcript talk.csv  # a modality of one's own
    python -m grf_stream.client --webcam --mic --transcript-stdin           # live
    python -m grf_stream.client --video talk.mp4 --json                     # one JSON object per reply
    python -m grf_stream.client --stats                                     # the server's live numbers

A video file gives its frames (30 per second, as JPEG) and its sound track; a transcript CSV has
the columns start, end, text (seconds from the start of the media); each phrase is sent when it
ends. A signal CSV (`--signal NAME=FILE`, for a modality the server was given as a plugin) has a
column `time` (seconds, at a steady rate) and one column per channel; it goes in `signal` messages
of half a second each. With `--window segment` everything is one segment, fused when the stream ends; the default,
`window`, predicts after every `--window-s` seconds of audio and video and every phrase.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import zmq
import zmq.asyncio

from grf_stream.serving import protocol as p

DEMO = Path(__file__).parent / "demo"  # a public-domain speech and its transcript (demo/README.md)
FRAME_RATE = 30.0
AUDIO_CHUNK_S = 0.1
SIGNAL_CHUNK_S = 0.5
SAMPLE_RATE = 16000


def media_events(video: Path | None, audio: Path | None, transcript: Path | None,
                 signals: dict[str, Path] | None = None):
    """(time, kind, payload) of everything to send, in time order."""
    from grf_stream.features.media import read_audio, video_frames

    events = []
    if video is not None:
        for i, frame in enumerate(video_frames(video, FRAME_RATE)):
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
            events.append((i / FRAME_RATE, "video", jpeg.tobytes()))
    sound = read_audio(audio or video) if (audio or video) is not None else None
    if sound is not None:
        pcm = pcm16_at(sound.samples, sound.sample_rate)
        step = int(AUDIO_CHUNK_S * SAMPLE_RATE)
        events += [((i + step) / SAMPLE_RATE, "audio", pcm[i:i + step]) for i in range(0, len(pcm), step)]
    if transcript is not None:
        events += [(float(row["end"]), "text", row["text"]) for row in read_transcript(transcript)]
    for name, path in (signals or {}).items():
        times, values, rate = read_signal(path)
        step = max(1, round(SIGNAL_CHUNK_S * rate))
        events += [(float(times[min(i + step, len(times)) - 1]), name, (values[i:i + step], rate))
                   for i in range(0, len(values), step)]
    return sorted(events, key=lambda e: e[0])


def read_signal(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """(times, values (T, channels) float32, samples a second) of a signal CSV: `time`, then one column a channel."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "time" not in rows[0] or len(rows[0]) < 2:
        raise SystemExit(f"{path}: a signal needs a column time (seconds) and one column per channel, with rows")
    channels = [c for c in rows[0] if c != "time"]
    try:
        times = np.array([float(r["time"]) for r in rows])
        values = np.array([[float(r[c]) for c in channels] for r in rows], np.float32)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"{path}: every time and value must be a number ({error})") from None
    gaps = np.diff(times)
    if len(times) < 2 or gaps.min() <= 0 or gaps.max() > 1.5 * np.median(gaps):
        raise SystemExit(f"{path}: times must rise at a steady rate (one sample every 1/rate seconds)")
    return times, values, float(1 / np.median(gaps))


def pcm16_at(samples: np.ndarray, rate: int) -> np.ndarray:
    """Mono float samples at any rate -> PCM16 at 16 kHz (what a microphone client would send)."""
    import soxr

    resampled = soxr.resample(np.asarray(samples, np.float32), rate, SAMPLE_RATE) if rate != SAMPLE_RATE else samples
    return (np.clip(resampled, -1, 1) * 32767).astype(np.int16)


def read_transcript(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"start", "end", "text"} - set(rows[0] if rows else {})
    if missing:
        raise SystemExit(f"{path}: a transcript needs the columns start, end, text (seconds, phrase); missing {sorted(missing)}")
    return rows


# What each modality is to a person watching the output.
PLAIN_NAMES = {"text": "words", "audio": "voice", "video": "face"}


def rests_on(fused: list[str], sent: list[str]) -> str:
    """What a prediction rests on, in words read at a glance: "words + voice + face", or
    "voice + face; no words yet" while the session has sent no phrase. The default model reads
    sentiment from words, so before the first phrase it shows its prior, not what it heard or saw."""
    held = " + ".join(PLAIN_NAMES.get(m, m) for m in fused) or "nothing"
    missing = [f"no {PLAIN_NAMES.get(m, m)} yet" for m in sent if m not in fused]
    return "; ".join([held, *missing])


class Client:
    def __init__(self, address: str, session: str, as_json: bool, curve: tuple[Path, Path] | None = None):
        self.context = zmq.asyncio.Context()
        self.socket = self.context.socket(zmq.DEALER)
        if curve is not None:
            use_curve(self.socket, *curve)
        self.socket.connect(address)
        self.session, self.as_json = session, as_json
        self.sent_modalities: list[str] = []  # what this client said in hello it would send
        self.seq = itertools.count()
        self.closed = asyncio.Event()
        self.predictions = 0

    async def send(self, cls, *fields) -> None:
        await self.socket.send(p.encode(cls(self.session, next(self.seq), time.time(), *fields)))

    async def receive(self) -> None:
        while not self.closed.is_set():
            reply = p.decode_reply(await self.socket.recv())
            self.show(reply)
            if isinstance(reply, p.Prediction):
                self.predictions += 1
            if isinstance(reply, p.Closed):
                self.closed.set()

    def show(self, reply) -> None:
        if self.as_json:
            print(json.dumps({"type": type(reply).__name__.lower(), **asdict(reply)}, default=str), flush=True)
        elif isinstance(reply, p.Prediction):
            print(f"{reply.session} seg {reply.segment} step {reply.step:>2} {reply.modality:<6} "
                  f"sentiment {reply.value:+.3f} gate {reply.gate:.3f} ({reply.latency_ms:5.1f} ms)  "
                  f"{rests_on(reply.modalities, self.sent_modalities)}", flush=True)
        elif isinstance(reply, p.Error):
            print(f"error {reply.code} (seq {reply.seq}): {reply.message}", file=sys.stderr, flush=True)
        elif isinstance(reply, p.Closed):
            print(f"closed: {reply.reason} {reply.stats}", flush=True)
        elif isinstance(reply, p.Welcome):
            print(f"connected as {reply.session}: the server fuses {reply.modalities}", flush=True)

    async def hello(self, modalities: list[str], window: str, window_s: float) -> None:
        self.sent_modalities = modalities
        await self.send(p.Hello, modalities, window, SAMPLE_RATE, window_s, False)

    async def replay(self, events, modalities, window: str, window_s: float, speed: float) -> None:
        await self.hello(modalities, window, window_s)
        started = time.monotonic()
        for at, kind, payload in events:
            delay = at / speed - (time.monotonic() - started)
            if delay > 0:
                await asyncio.sleep(delay)  # real time (or `speed` times it)
            if kind == "video":
                await self.send(p.Video, payload, None)
            elif kind == "audio":
                await self.send(p.Audio, payload, SAMPLE_RATE)
            elif kind == "text":
                await self.send(p.Text, payload, True)
            else:  # a signal modality
                await self.send(p.Signal, kind, *payload)
        await self.send(p.Bye)

    async def live(self, webcam: str | None, mic: str | None, mic_format: str, stdin: bool, window: str,
                   window_s: float) -> None:
        """Stream capture devices and typed phrases until stdin ends (or the devices do, or Ctrl-C), then say bye."""
        modalities = [m for m, on in (("video", webcam is not None), ("audio", mic), ("text", stdin)) if on]
        await self.hello(modalities, window, window_s)
        sources = [self.webcam(webcam)] if webcam is not None else []
        sources += [self.microphone(mic, mic_format)] if mic else []
        producers = [asyncio.create_task(source) for source in sources]
        try:
            if stdin:
                await self.phrases()
            else:
                await asyncio.gather(*producers)
        finally:
            for task in producers:
                task.cancel()
            await self.send(p.Bye)

    async def webcam(self, device: str) -> None:
        """JPEG frames from a camera (an index) or anything else OpenCV captures (a stream URL, a file)."""
        capture = cv2.VideoCapture(int(device) if device.isdigit() else device)
        if not capture.isOpened():
            raise SystemExit(f"cannot open webcam {device}: check --webcam N (or a stream URL) and that the camera is free")
        loop = asyncio.get_running_loop()
        while True:
            ok, frame = await loop.run_in_executor(None, capture.read)
            if not ok:
                return
            await self.send(p.Video, cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(), None)

    async def microphone(self, device: str, input_format: str) -> None:
        """PCM16 at 16 kHz in 100 ms chunks from a capture device through PyAV (FFmpeg's capture):
        ALSA by default, or any FFmpeg input format (pulse, avfoundation, dshow, ...)."""
        import av

        loop = asyncio.get_running_loop()
        try:
            container = av.open(device, format=input_format)
        except (av.error.FFmpegError, ValueError) as error:
            raise SystemExit(f"cannot open microphone {device!r} as {input_format} ({error}): give a capture device, "
                             f"e.g. --mic default (ALSA), or its FFmpeg format with --mic-format")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        frames = container.decode(audio=0)
        pending = np.zeros(0, np.int16)
        while (frame := await loop.run_in_executor(None, next, frames, None)) is not None:  # None: the device ended
            for chunk in resampler.resample(frame):
                pending = np.concatenate([pending, chunk.to_ndarray().reshape(-1)])
            step = int(AUDIO_CHUNK_S * SAMPLE_RATE)
            while len(pending) >= step:
                await self.send(p.Audio, pending[:step], SAMPLE_RATE)
                pending = pending[step:]

    async def phrases(self) -> None:
        """One final transcript phrase per line typed (or piped) on stdin."""
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if line.strip():
                await self.send(p.Text, line.strip(), True)

    def close(self) -> None:
        self.socket.close(linger=1000)
        self.context.term()


def use_curve(socket: zmq.Socket, client_secret: Path, server_public: Path) -> None:
    """Encrypt with CURVE: this client's key pair, and the server's public key to trust."""
    from zmq.auth import load_certificate

    public, secret = load_certificate(client_secret)
    if secret is None:
        raise SystemExit(f"{client_secret} holds no secret key: give this client's .key_secret file")
    socket.curve_publickey, socket.curve_secretkey = public, secret
    socket.curve_serverkey = load_certificate(server_public)[0]


async def show_stats(client: Client, every_s: float, count: int) -> int:
    """Ask for the server's live numbers every `every_s` seconds, `count` times (0: until Ctrl-C)."""
    for i in itertools.count():
        await client.send(p.StatsRequest)
        reply = p.decode_reply(await asyncio.wait_for(client.socket.recv(), 10))
        if client.as_json:
            print(json.dumps(reply.numbers), flush=True)
        else:
            print("  ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in reply.numbers.items()),
                  flush=True)
        if count and i + 1 >= count:
            return 0
        await asyncio.sleep(every_s)


async def run(args) -> int:
    curve = (args.curve_key, args.server_key) if args.curve_key else None
    client = Client(args.server, args.session or f"client-{uuid.uuid4().hex[:8]}", args.json, curve)
    if args.stats:
        try:
            return await show_stats(client, 1.0, args.count)
        finally:
            client.close()
    receiver = asyncio.create_task(client.receive())
    try:
        if args.webcam is not None or args.mic or args.transcript_stdin:
            await client.live(args.webcam, args.mic, args.mic_format, args.transcript_stdin, args.window, args.window_s)
        else:
            events = media_events(args.video, args.audio, args.transcript, dict(args.signal))
            modalities = [m for m in ("text", "audio", "video", *dict(args.signal)) if m in {k for _, k, _ in events}]
            if not modalities:
                raise SystemExit("nothing to send: give --video, --audio and/or --transcript (or --webcam, --mic, "
                                 "--transcript-stdin)")
            await client.replay(events, modalities, args.window, args.window_s, args.speed)
        await asyncio.wait_for(client.closed.wait(), args.timeout)
    except asyncio.TimeoutError:
        print(f"no 'closed' from the server within {args.timeout} s", file=sys.stderr)
        return 1
    finally:
        receiver.cancel()
        client.close()
    return 0 if client.predictions else 1


def named_file(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{value!r}: give NAME=FILE, e.g. pulse=wrist.csv")
    return name, Path(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="tcp://127.0.0.1:5555")
    parser.add_argument("--video", type=Path, help="a video file to replay (frames and sound)")
    parser.add_argument("--audio", type=Path, help="an audio file to replay (wav, flac, ...)")
    parser.add_argument("--transcript", type=Path, help="CSV with start, end, text")
    parser.add_argument("--signal", type=named_file, action="append", default=[], metavar="NAME=FILE",
                        help="a signal modality the server takes (a plugin's), from a CSV: time, one column a channel")
    parser.add_argument("--demo", action="store_true",
                        help="replay the packaged demo: 11 s of a public-domain speech and its transcript")
    parser.add_argument("--webcam", nargs="?", const="0", help="live: stream this camera (default 0), or a stream URL")
    parser.add_argument("--mic", nargs="?", const="default", help="live: stream this microphone (default: ALSA's 'default')")
    parser.add_argument("--mic-format", default="alsa", help="FFmpeg input format of --mic (alsa, pulse, avfoundation, dshow)")
    parser.add_argument("--transcript-stdin", action="store_true", help="live: each line on stdin is a phrase")
    parser.add_argument("--window", choices=("window", "segment"), default="window")
    parser.add_argument("--window-s", type=float, default=1.0)
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed: 1 = real time")
    parser.add_argument("--session", help="session id (default: a random one)")
    parser.add_argument("--json", action="store_true", help="one JSON object per reply")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server at the end")
    parser.add_argument("--stats", action="store_true", help="print the server's live numbers every second")
    parser.add_argument("--count", type=int, default=0, help="with --stats: stop after this many (0: never)")
    parser.add_argument("--curve-key", type=Path, help="CURVE: this client's .key_secret file")
    parser.add_argument("--server-key", type=Path, help="CURVE: the server's public .key file")
    args = parser.parse_args(argv)
    if args.demo:
        args.audio, args.transcript = DEMO / "jfk.flac", DEMO / "jfk.csv"
    try:
        sys.exit(asyncio.run(run(args)))
    except KeyboardInterrupt:  # Ctrl-C: how --stats and live streams end
        sys.exit(130)


if __name__ == "__main__":
    main()
