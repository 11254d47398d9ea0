"""How fast are the feature extractors on one core, whole files and live chunks?

Per extractor: the real-time factor (seconds of media per second of compute, whole media at once,
as the offline tool runs it) and the latency of one `extract` call at the chunk sizes a server
sees (p50/p99 over many calls), on the project's real media. The process is pinned to one core and
every extractor uses one thread, as in serving.

    python bench/extract_speed.py                          # the table of BENCHMARKS.md
    python bench/extract_speed.py --write BENCHMARKS.md    # ... and replace its section there
    python bench/extract_speed.py --repeats 1              # a quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from report import command_line, cpu_name, write_section

from grf_stream.features import AudioChunk, AudioExtractor, TextExtractor, VideoExtractor
from grf_stream.features.media import read_audio, video_frames
from grf_stream.features.offline import read_labels

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GOALS = {"video": ">= 30 frames/s (RTF >= 1)", "audio": "RTF >= 50", "text": "p99 <= 30 ms per phrase"}


def latencies_ms(calls) -> np.ndarray:
    """Milliseconds of each zero-argument call."""
    times = []
    for call in calls:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return np.array(times) * 1000


def best_seconds(fn, repeats: int) -> float:
    """The fastest of `repeats` runs: the least disturbed by other work on the machine."""
    return min(latencies_ms([fn] * repeats)) / 1000


def row(extractor: str, measure: str, value: str, goal: str = "") -> str:
    return f"| {extractor} | {measure} | {value} | {goal} |"


def percentiles(ms: np.ndarray) -> str:
    return f"p50 {np.percentile(ms, 50):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms"


def bench_text(repeats: int) -> list[str]:
    phrases = [r.text for r in read_labels(DATA / "mosi" / "mosi_labels_transcripts.csv")[:300] if r.text]
    extractor = TextExtractor()
    extractor.extract(phrases[0])  # warm-up
    ms = np.concatenate([latencies_ms([lambda p=p: extractor.extract(p, "bench") for p in phrases]) for _ in range(repeats)])
    words = np.mean([len(p.split()) for p in phrases])
    return [row("text", f"one MOSI transcript phrase per chunk ({len(phrases)} phrases, {words:.0f} words on average)", percentiles(ms), GOALS["text"]),
            row("text", "phrases per second", f"{1000 / ms.mean():.0f}")]


def bench_audio(repeats: int) -> list[str]:
    extractor = AudioExtractor()
    rows = []
    for name in ("jfk.flac", "03bSnISJMiM_1.wav"):
        audio = read_audio(DATA / "media" / name)
        seconds = len(audio.samples) / audio.sample_rate
        compute = best_seconds(lambda: extractor.extract_all(audio), repeats)
        rows.append(row("audio", f"whole file, {name} ({seconds:.1f} s, {audio.sample_rate} Hz)", f"RTF {seconds / compute:.0f}", GOALS["audio"]))
    speech = read_audio(DATA / "media" / "jfk.flac")
    pcm16_16k = (np.round(extractor_input_16k(speech) * 32767)).astype(np.int16)
    for chunk_ms, rate, kind in ((20, 16_000, "PCM16"), (100, 16_000, "PCM16"), (500, 16_000, "PCM16"), (100, 44_100, "float")):
        samples = pcm16_16k if rate == 16_000 else speech.samples
        size = rate * chunk_ms // 1000
        chunks = [AudioChunk(samples[i : i + size].tobytes() if kind == "PCM16" else samples[i : i + size], rate) for i in range(0, len(samples) - size, size)]
        ms = np.concatenate([latencies_ms([lambda c=c: extractor.extract(c, "bench") for c in chunks]) for _ in range(repeats)])
        extractor.close("bench")
        rows.append(row("audio", f"{chunk_ms} ms chunks, {kind} {rate} Hz", percentiles(ms)))
    return rows


def extractor_input_16k(audio: AudioChunk) -> np.ndarray:
    """The clip at 16 kHz, as a client would send it (resampled by soxr, as the extractor does)."""
    import soxr
    return soxr.resample(audio.samples, audio.sample_rate, 16_000, quality="HQ").clip(-1, 1)


def bench_video(repeats: int) -> list[str]:
    extractor = VideoExtractor()
    frames = [cv2.resize(f, (640, 480)) for f in video_frames(DATA / "media" / "Oz06ZWiO20M_6.mp4", 30.0)]
    compute = best_seconds(lambda: extractor.extract_all(frames), repeats)
    rows = [row("video", f"whole clip, {len(frames)} frames 640x480, face tracked", f"{len(frames) / compute:.0f} frames/s (RTF {len(frames) / 30 / compute:.1f})", GOALS["video"])]
    ms = np.concatenate([latencies_ms([lambda f=f: extractor.extract(f, "bench") for f in frames]) for _ in range(repeats)])
    extractor.close("bench")
    rows.append(row("video", "one 640x480 frame per chunk, face tracked", percentiles(ms)))
    ms = latencies_ms([lambda f=f: extractor.extract_all(f) for f in frames[::3]])
    rows.append(row("video", "one 640x480 frame, face detected afresh (new session or face lost)", percentiles(ms)))
    empty = np.full((480, 640, 3), 120, np.uint8)
    rows.append(row("video", "one 640x480 frame without a face", percentiles(latencies_ms([lambda: extractor.extract(empty, "none")] * 100))))
    jpeg = cv2.imencode(".jpg", frames[0])[1].tobytes()
    rows.append(row("video", "one 640x480 JPEG frame per chunk (decode included)", percentiles(latencies_ms([lambda: extractor.extract(jpeg, "jpeg")] * 100))))
    return rows


def machine() -> str:
    import torch
    return (f"{cpu_name()}, {os.cpu_count()} cores (pinned to one), Python {platform.python_version()}, "
            f"torch {torch.__version__}, OpenCV {cv2.__version__}, numpy {np.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="passes over the media; whole-file timings keep the fastest")
    parser.add_argument("--write", type=Path, help="replace the extract-speed section of this markdown file")
    args = parser.parse_args()
    if not (DATA / "media").is_dir():
        sys.exit(f"the real media are not at {DATA}: this benchmark runs on the project's shared data")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as each extractor has when serving
    lines = ["| extractor | measure | result | goal |", "|---|---|---|---|"]
    for bench in (bench_video, bench_audio, bench_text):
        lines += bench(args.repeats)
    body = f"Machine: {machine()}.\n\n" + "\n".join(lines)
    print(body)
    if args.write:
        write_section(args.write, "extract-speed", "Feature extraction speed", body, command_line("extract_speed.py"))


if __name__ == "__main__":
    main()
