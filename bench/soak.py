"""Soak: well-behaved sessions beside hostile clients, with the fusion actor killed every minute.

In one run, the server as a user starts it (`python -m grf_stream.serve`), twice: once with only
the well-behaved sessions, once with hostile clients beside them, each for `--minutes`:
- well-behaved: `--sessions` sessions, each sending one `features` step every 100 ms (1 s of audio,
  1 s of video or a phrase, in turn), timed from sending to its prediction;
- hostile (second run only), each on its own connection, in a process of its own (as another
  machine would be, but on these same cores) and at full speed: fuzzed bytes and msgpack maps,
  9 MiB messages, JPEG bombs (a 629-byte header declaring 8000x8000), phrases of 2,000
  punctuation marks, and a flood of 4 s PCM chunks;
- every minute the serving fusion actor's process is killed (`kill -9`); the server's standby
  takes its place, seeded from the front-end's copies, and Ray restarts the killed one as the next
  standby.
It reports, per minute, the well-behaved sessions' p50/p99, their errors and lost predictions
(steps sent that never got one), and the memory (RSS) of the server and every process under it:
the peak, and at the end of minute 1 against the end of the run.

    python bench/soak.py [--sessions 32] [--minutes 5] [--hostile fuzz oversized ...] [--write BENCHMARKS.md]
    python bench/soak.py --sessions 8 --each 30      # each hostile client alone, 30 s each
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import msgpack
import numpy as np
import zmq.asyncio

from report import command_line, cpu_name, write_section
from serve_latency import free_port, step_windows
from grf_stream.serving import protocol as p

ROOT = Path(__file__).resolve().parents[1]
PERIOD_S = 0.1
SIZES = {"text": 384, "audio": 26, "video": 17}
JPEG_BOMB = (b"\xff\xd8\xff\xc0\x00\x11\x08" + (8000).to_bytes(2, "big") * 2 + b"\x03" + bytes(9)) + bytes(600)


def start_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "grf_stream.serve", f"port={port}", "stats_every_s=1000",
                                "tensorboard_dir=/tmp/grf_soak_bench"], cwd=ROOT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    while "grf-stream serving" not in (line := process.stdout.readline()):
        if process.poll() is not None or not line:
            raise SystemExit("server did not start")
    # Read on, or a full pipe would block the server's next log line (and the server with it).
    threading.Thread(target=deque, args=(process.stdout, 0), daemon=True).start()
    return process, f"tcp://127.0.0.1:{port}"


def tree_rss_mb(root_pid: int) -> float:
    """Resident memory of a process and all its descendants (Ray's processes are under the server)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError):
            continue
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total / 2**20


def kill_fusion_actor() -> bool:
    """Kill -9 the fusion actor that serves: of the FusionActor processes, the one that has used the
    most CPU (a standby only warmed up)."""
    cpu_seconds = {}
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and open(f"/proc/{entry}/cmdline", "rb").read().startswith(b"ray::FusionActor"):
                with open(f"/proc/{entry}/stat") as stat:
                    utime, stime = stat.read().rsplit(")", 1)[1].split()[11:13]
                cpu_seconds[int(entry)] = int(utime) + int(stime)
        except OSError:
            continue
    if not cpu_seconds:
        return False
    os.kill(max(cpu_seconds, key=cpu_seconds.get), signal.SIGKILL)
    return True


class Record:
    def __init__(self):
        self.latencies: list[tuple[float, float]] = []  # (sent at, ms)
        self.errors: list[tuple[float, str]] = []
        self.sent = 0
        self.answered = 0


async def well_behaved(address: str, name: str, until: float, record: Record) -> None:
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(address)
    await sock.send(p.encode(p.Hello(name, 0, 0.0, ["audio", "video", "text"], "window")))
    p.decode_reply(await sock.recv())
    windows = step_windows(SIZES, np.random.default_rng(abs(hash(name)) % 2**32))
    sent: dict[int, float] = {}

    async def receive():
        while True:
            reply = p.decode_reply(await sock.recv())
            if isinstance(reply, p.Prediction) and reply.seq in sent:
                started = sent.pop(reply.seq)
                record.latencies.append((started, (time.perf_counter() - started) * 1000))
                record.answered += 1
            elif isinstance(reply, p.Error):
                record.errors.append((time.perf_counter(), f"{reply.code}: {reply.message[:80]}"))

    receiver = asyncio.create_task(receive())
    await asyncio.sleep(random.uniform(0, PERIOD_S))
    start, seq = time.perf_counter(), 1
    while time.perf_counter() < until:
        modality, x = windows[seq % 3]
        sent[seq] = time.perf_counter()
        record.sent += 1
        await sock.send(p.encode(p.Features(name, seq, time.time(), modality, x, None)))
        seq += 1
        await asyncio.sleep(max(0.0, start + seq * PERIOD_S - time.perf_counter()))
    await asyncio.sleep(5.0)  # the last answers, a restart included
    receiver.cancel()
    sock.close()


async def hostile(address: str, kind: str, until: float) -> None:
    """One hostile client at full speed; it reads (and drops) whatever comes back."""
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.sndhwm = 100
    sock.connect(address)
    rng = np.random.default_rng(hash(kind) % 2**32)
    name = f"hostile-{kind}"
    await sock.send(p.encode(p.Hello(name, 0, 0.0, ["audio", "video", "text"], "window")))
    seq = 1

    async def drain():
        while True:
            await sock.recv()

    drainer = asyncio.create_task(drain())
    # Built once: the attacker's own work is not the server's (only seq changes where the server reads it).
    oversized = p.encode(p.Features(name, 1, 0.0, "audio", np.zeros((90_000, 26), np.float32), None))
    pcm = rng.integers(-3000, 3000, 64_000).astype(np.int16)
    while time.perf_counter() < until:
        if kind == "fuzz":
            message = rng.bytes(int(rng.integers(1, 300))) if seq % 2 else msgpack.packb(
                {"v": 1, "type": random.choice(p.CLIENT_TYPES), "session": name, "seq": seq, "x": rng.bytes(20)})
        elif kind == "oversized":
            message = oversized  # refused by its size, before its seq is read
        elif kind == "jpeg_bomb":
            message = p.encode(p.Video(name, seq, 0.0, JPEG_BOMB))
        elif kind == "long_phrase":
            message = p.encode(p.Text(name, seq, 0.0, "!" * 2_000, True))
        else:  # audio_flood
            message = p.encode(p.Audio(name, seq, 0.0, pcm, 16000))
        await sock.send(message)
        seq += 1
        await asyncio.sleep(0)  # full speed, yet let the event loop breathe
    drainer.cancel()
    sock.close()
    print(f"{name}: {seq - 1} messages sent", flush=True)


HOSTILE = ("fuzz", "oversized", "jpeg_bomb", "long_phrase", "audio_flood")


def run_hostile(address: str, kind: str, seconds: float, niceness: int = 0) -> None:
    """One hostile client's process (its own event loop: its load never delays the measuring clients')."""
    os.nice(niceness)
    asyncio.run(hostile(address, kind, time.perf_counter() + seconds))


def start_hostile(address: str, kinds: tuple[str, ...], seconds: float,
                  niceness: int = 0) -> list[multiprocessing.Process]:
    spawn = multiprocessing.get_context("spawn")  # no fork of this process's ZeroMQ context
    processes = [spawn.Process(target=run_hostile, args=(address, kind, seconds, niceness), daemon=True)
                 for kind in kinds]
    for process in processes:
        process.start()
    return processes


async def soak(address: str, sessions: int, seconds: float, kinds: tuple[str, ...], server_pid: int,
               hostile_nice: int = 0) -> dict:
    record, memory, kills = Record(), [], []
    started = time.perf_counter()
    until = started + seconds

    async def watch():
        next_kill = started + 60
        while time.perf_counter() < until + 5:
            memory.append((time.perf_counter() - started, tree_rss_mb(server_pid)))
            if next_kill <= time.perf_counter() < until:
                if kill_fusion_actor():
                    kills.append(time.perf_counter() - started)
                next_kill += 60
            await asyncio.sleep(1.0)

    attackers = start_hostile(address, kinds, seconds, hostile_nice)
    tasks = [well_behaved(address, f"good-{i}-{time.time_ns()}", until, record) for i in range(sessions)]
    await asyncio.gather(watch(), *tasks)
    for process in attackers:
        process.join(10)
        process.kill()
    return {"record": record, "memory": memory, "kills": kills, "started": started}


def per_minute(result: dict, minutes: int) -> list[dict]:
    record, started = result["record"], result["started"]
    rows = []
    for minute in range(minutes):
        ms = [v for t, v in record.latencies if minute * 60 <= t - started < (minute + 1) * 60]
        errors = [e for t, e in record.errors if minute * 60 <= t - started < (minute + 1) * 60]
        rows.append({"minute": minute + 1, "p50": float(np.percentile(ms, 50)) if ms else float("nan"),
                     "p99": float(np.percentile(ms, 99)) if ms else float("nan"), "steps": len(ms),
                     "errors": len(errors), "first_error": errors[0] if errors else ""})
    return rows


def memory_summary(result: dict, minutes: int) -> tuple[float, float, float]:
    memory = result["memory"]

    def at(second: float) -> float:
        return min(memory, key=lambda sample: abs(sample[0] - second))[1]

    return max(mb for _, mb in memory), at(60), at(minutes * 60)


def report(results: dict[str, dict], sessions: int, minutes: int) -> str:
    lines = [f"Machine: {cpu_name()}, {os.cpu_count()} cores; server, Ray actors and this load generator share it. "
             f"{sessions} well-behaved sessions at 10 steps/s each, {minutes} min per run, the fusion actor killed "
             "(kill -9) at the start of every minute after the first.", "",
             "| run | minute | steps answered | p50 ms | p99 ms | errors (well-behaved) |", "|---|---|---:|---:|---:|---:|"]
    for name, result in results.items():
        for row in per_minute(result, minutes):
            lines.append(f"| {name} | {row['minute']} | {row['steps']} | {row['p50']:.1f} | {row['p99']:.1f} | "
                         f"{row['errors']} |")
    lines += ["", "| run | sent | answered | lost | fusion kills | peak memory MB | memory after min 1 MB | at the end MB |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, result in results.items():
        record = result["record"]
        peak, first, last = memory_summary(result, minutes)
        lines.append(f"| {name} | {record.sent} | {record.answered} | {record.sent - record.answered} | "
                     f"{len(result['kills'])} | {peak:.0f} | {first:.0f} | {last:.0f} |")
    errors = {e for result in results.values() for _, e in result["record"].errors}
    if errors:
        lines += ["", "Errors the well-behaved sessions got: " + "; ".join(sorted(errors)[:5])]
    return "\n".join(lines)


def each_alone(address: str, sessions: int, seconds: float, kinds: tuple[str, ...], server_pid: int) -> str:
    """One server; the well-behaved sessions alone, then beside each hostile client on its own (no kills)."""
    lines = [f"Machine: {cpu_name()}, {os.cpu_count()} cores, shared as above. {sessions} well-behaved sessions at "
             f"10 steps/s each, {seconds:.0f} s per run, one server; the first 5 s of each run left out (the "
             "attacker's process starting).", "",
             "| beside | p50 ms | p99 ms | max ms | errors | lost |", "|---|---:|---:|---:|---:|---:|"]
    for kind in ("nothing", *kinds):
        result = asyncio.run(soak(address, sessions, seconds, () if kind == "nothing" else (kind,), server_pid))
        record = result["record"]
        ms = [v for t, v in record.latencies if t - result["started"] >= 5]
        lines.append(f"| {kind} | {np.percentile(ms, 50):.1f} | {np.percentile(ms, 99):.1f} | {max(ms):.1f} | "
                     f"{len(record.errors)} | {record.sent - record.answered} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--minutes", type=int, default=5)
    parser.add_argument("--hostile", nargs="+", choices=HOSTILE, default=list(HOSTILE), help="which hostile clients")
    parser.add_argument("--each", type=float, metavar="SECONDS",
                        help="instead: each hostile client alone beside the sessions, SECONDS each")
    parser.add_argument("--hostile-nice", type=int, default=0,
                        help="the hostile clients' niceness: 19 leaves them only the CPU the server does not use, "
                             "as clients on other machines would (the server still pays for their traffic)")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    if args.each:
        process, address = start_server()
        try:
            body = each_alone(address, args.sessions, args.each, tuple(args.hostile), process.pid)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(60)
        print(body)
        if args.write:
            write_section(args.write, "soak_each", "Soak: each hostile client alone", body, command_line("soak.py"))
        return
    results = {}
    for name, kinds in (("well-behaved only", ()), ("with hostile clients", tuple(args.hostile))):
        process, address = start_server()
        try:
            results[name] = asyncio.run(soak(address, args.sessions, args.minutes * 60, kinds, process.pid,
                                             args.hostile_nice))
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(60)
    body = report(results, args.sessions, args.minutes)
    print(body)
    if args.write:
        write_section(args.write, "soak", "Soak: hostile clients beside well-behaved sessions", body,
                      command_line("soak.py"))


if __name__ == "__main__":
    main()
