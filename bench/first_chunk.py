"""The first chunk of a session against the steady ones: what warming the server up saves.

In one run, two servers started as a user starts them (`python -m grf_stream.serve`): one that
warms every extractor and the model before it says it is serving (the default) and one that does
not (`warm=false`). On each, a second after it says it is serving, one session per raw modality in
turn (video first: the first frame of the first session), each the first of its modality on that
server:
- video: the frames of the CMU-MOSI clip as JPEG, 30 per second, `window_s` one frame;
- audio: its sound track as 100 ms PCM16 chunks, `window_s` 0.1 s;
- text: five phrases, one every 200 ms.
Each chunk is timed from sending it to receiving its prediction. "Steady" is the p50 of every
chunk after the first of its session. One first chunk is one sample, and on a small machine a
sample swings by tens of milliseconds, so each server is started `--repeats` times (alternating)
and the first chunk is given as the median and range over the starts.

    python bench/first_chunk.py [--chunks 40] [--repeats 3] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import zmq.asyncio

from report import command_line, cpu_name, write_section
from serve_latency import free_port
from grf_stream.client import SAMPLE_RATE, pcm16_at
from grf_stream.features.media import read_audio, video_frames
from grf_stream.serving import protocol as p

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "media" / "Oz06ZWiO20M_6.mp4"
MODALITIES = ("video", "audio", "text")  # video first: the first frame of the first session
PHRASES = ["I went to see it last night", "the acting was wonderful", "but the story dragged on",
           "I would not watch it again", "still the music was lovely"]


def start_server(warm: bool) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "grf_stream.serve", f"port={port}", f"warm={str(warm).lower()}",
         "stats_every_s=1000", "tensorboard_dir=/tmp/grf_first_chunk_bench"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while "grf-stream serving" not in (line := process.stdout.readline()):
        if process.poll() is not None or not line:
            raise SystemExit("server did not start")
    return process, f"tcp://127.0.0.1:{port}", line.strip()


def chunks(modality: str, count: int) -> tuple[list[p.Message], float, float]:
    """(messages without session and seq, window_s, seconds between chunks) of one modality."""
    if modality == "video":
        frames = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
                  for f in video_frames(CLIP, 30.0)][:count]
        return [(p.Video, (jpeg, None)) for jpeg in frames], 1 / 30, 1 / 30
    if modality == "audio":
        sound = read_audio(CLIP)
        pcm = pcm16_at(sound.samples, sound.sample_rate)
        step = SAMPLE_RATE // 10
        return [(p.Audio, (pcm[i:i + step], SAMPLE_RATE)) for i in range(0, step * count, step)], 0.1, 0.1
    return [(p.Text, (phrase, True)) for phrase in PHRASES], 1.0, 0.2


async def session_times(address: str, modality: str, prepared) -> list[float]:
    """Milliseconds from sending a chunk to the prediction of the window it completed, in order."""
    messages, window_s, period = prepared
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(address)
    name = f"first-{modality}-{time.time_ns()}"
    await sock.send(p.encode(p.Hello(name, 0, 0.0, [modality], "window", SAMPLE_RATE, window_s)))
    p.decode_reply(await sock.recv())  # welcome
    sent: dict[int, float] = {}
    times: list[float] = []

    async def receive():
        while True:
            reply = p.decode_reply(await sock.recv())
            if isinstance(reply, p.Error):
                raise SystemExit(f"{modality}: {reply.code} {reply.message}")
            if isinstance(reply, p.Prediction):
                times.append((time.perf_counter() - sent[reply.seq]) * 1000)

    receiver = asyncio.create_task(receive())
    start = time.perf_counter()
    for seq, (kind, fields) in enumerate(messages, start=1):
        sent[seq] = time.perf_counter()
        await sock.send(p.encode(kind(name, seq, time.time(), *fields)))
        await asyncio.sleep(max(0.0, start + seq * period - time.perf_counter()))
    await asyncio.sleep(2.0)  # the last answers
    receiver.cancel()
    await sock.send(p.encode(p.Bye(name, len(messages) + 1, time.time())))
    sock.close()
    return times


def measure(warm: bool, prepared: dict) -> tuple[str, dict[str, list[float]]]:
    process, address, banner = start_server(warm)

    async def sessions():
        await asyncio.sleep(1.0)  # a user's first session comes a moment after the server says it serves
        return {m: await session_times(address, m, prepared[m]) for m in MODALITIES}

    try:
        return banner, asyncio.run(sessions())
    finally:
        process.terminate()
        process.wait(60)


def report(runs: dict[bool, list[tuple[str, dict[str, list[float]]]]]) -> str:
    starts = len(runs[True])
    lines = [f"Machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}; the server, its Ray actors "
             "and this client share the machine. One session per modality, in this order, each the first of its "
             f"modality on a freshly started server, {starts} starts of each server; a chunk is timed from sending "
             "it to its prediction. First chunk: median (range) over the starts; steady: p50 of all later chunks.",
             "", "| server | modality | first chunk ms | steady p50 ms | first / steady |", "|---|---|---:|---:|---:|"]
    for warm, starts_of_server in runs.items():
        for modality in MODALITIES:
            firsts = [times[modality][0] for _, times in starts_of_server]
            steady = float(np.median([ms for _, times in starts_of_server for ms in times[modality][1:]]))
            first = float(np.median(firsts))
            lines.append(f"| {'warm (default)' if warm else 'warm=false'} | {modality} | {first:.1f} "
                         f"({min(firsts):.0f}-{max(firsts):.0f}) | {steady:.1f} | {first / steady:.1f}x |")
    ready = {warm: [float(re.search(r"ready in ([\d.]+) s", banner).group(1)) for banner, _ in r] for warm, r in runs.items()}
    lines += ["", f"Ready (the server's `ready in N s`): warm {np.median(ready[True]):.1f} s, "
              f"warm=false {np.median(ready[False]):.1f} s (medians)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=40, help="video frames and audio chunks per session")
    parser.add_argument("--repeats", type=int, default=3, help="starts of each server")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    if not CLIP.exists():
        raise SystemExit(f"needs the CMU-MOSI clip at {CLIP} (../shared/data/media beside the project)")
    prepared = {m: chunks(m, args.chunks) for m in MODALITIES}  # decoded before any timing
    runs: dict[bool, list] = {True: [], False: []}
    for _ in range(args.repeats):
        for warm in runs:  # alternating, so a slow spell of the machine hits both
            runs[warm].append(measure(warm, prepared))
    body = report(runs)
    print(body)
    if args.write:
        write_section(args.write, "first-chunk", "The first chunk of a session", body, command_line("first_chunk.py"))


if __name__ == "__main__":
    main()
