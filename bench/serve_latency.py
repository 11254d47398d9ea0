"""Serving latency: the model's own step time against end to end through `python -m grf_stream.serve`.

In one run: the model-only time of one fusion step (FusionService, no Ray, no sockets), back to back
and at the sessions' pace of one step every 100 ms (on an otherwise idle machine a step that follows
100 ms of sleep runs slower: cold caches and a CPU woken up); the hop that carries one step to a
fusion actor and its result back, at the same pace, every way it can travel (a plain Ray actor
call, the TCP data plane of grf_stream/serving/channel.py, and the same calls over ZeroMQ
DEALER/ROUTER sockets, the transport it replaced; in turn, to the same actor); then the real server,
batched (max_batch=64) over each data plane and unbatched (max_batch=1), with 1, 8, 32 and 128
concurrent sessions, each sending one `features` step every 100 ms (1 s of audio, 1 s of video or a
phrase of text, in turn), timed from sending a message to receiving its prediction (after a 1 s
warm-up); the batched server's capacity: 128 sessions sending twice as fast, more than it can
answer; then one long run at 32 sessions to see whether latency grows (p99 of the first and of the
last 10 s).

    python bench/serve_latency.py [--seconds 10] [--long-seconds 60] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import zmq
import zmq.asyncio

from report import command_line, cpu_name, write_section
from grf_stream.default_model import load_serving_model
from grf_stream.model import GRF
from grf_stream.serving import protocol as p
from grf_stream.serving.channel import Channel, ChannelServer, decode_reply, encode_call
from grf_stream.serving.engine import FusionService, StepRequest, StepResult

ROOT = Path(__file__).resolve().parents[1]
PERIOD_S = 0.1  # each session sends a step every 100 ms
WARMUP_CALLS = 30  # left out of the timings: first calls, allocations
WINDOWS = {"audio": 100, "video": 30, "text": 12}  # rows of one step: 1 s of audio or video, one phrase
# The served extractors' feature sizes (grf_stream/features), written out so that `--model-only` runs
# where the extractors' own libraries are not installed (a bare GPU machine).
SERVED_SIZES = {"text": 384, "audio": 26, "video": 17}


def served_model() -> GRF:
    """The model the server runs by default (the packaged one)."""
    return load_serving_model()[0]


def step_windows(sizes: dict[str, int], rng) -> list[tuple[str, np.ndarray]]:
    return [(m, rng.standard_normal((WINDOWS[m], sizes[m])).astype(np.float32)) for m in ("audio", "video", "text")]


def percentiles(times_ms) -> dict[str, float]:
    return {"p50": float(np.percentile(times_ms, 50)), "p99": float(np.percentile(times_ms, 99))}


def model_step_ms(sessions: int = 1, device: str = "cpu", repeats: int = 300, period: float = 0.0,
                  buckets: bool | None = None) -> dict[str, float]:
    """A fusion step of `sessions` sessions in one call of the plain service, one call every `period`
    seconds (0: back to back): the floor under serving. `buckets`: as FusionService takes it (None:
    CUDA graphs on a GPU, eager elsewhere)."""
    torch.set_num_threads(1)
    service = FusionService(served_model(), device, buckets=buckets)
    names = [f"s{i}" for i in range(sessions)]
    for name in names:
        service.open(name)
    windows = step_windows(SERVED_SIZES, np.random.default_rng(0))
    times = []
    for i in range(repeats):
        modality, x = windows[i % 3]
        mask = np.ones(len(x), bool)
        started = time.perf_counter()
        service.step([StepRequest(name, i, modality, x, mask) for name in names])
        times.append((time.perf_counter() - started) * 1000)
        time.sleep(period)
    times = times[WARMUP_CALLS:]
    return {**percentiles(times), "steps_per_s": sessions * 1000 / float(np.mean(times))}


class Echo:
    """A fusion actor that does nothing, reachable both ways: its round trip is the floor under one
    fusion call per step."""

    threads = 1

    def __init__(self):
        self.channel = ChannelServer(self)
        self.router = zmq.Context.instance().socket(zmq.ROUTER)
        self.router_address = f"tcp://127.0.0.1:{self.router.bind_to_random_port('tcp://127.0.0.1')}"
        threading.Thread(target=self._answer_over_zmq, daemon=True).start()

    def _answer_over_zmq(self) -> None:
        """The same calls, answered the same way, over ZeroMQ (the bench alternates: never both at once)."""
        while True:
            if self.router.poll(100):
                identity, call = self.router.recv_multipart()
                self.router.send_multipart([identity, self.channel.answer(call)])

    def addresses(self) -> tuple[str, str]:
        return self.channel.address, self.router_address

    def step(self, requests: list[StepRequest]) -> list[StepResult]:
        return [StepResult(r.session, r.seq, 0, 1, r.modality, (r.modality,), 0.0, 0.0, np.zeros(64, np.float32))
                for r in requests]


def hop_ms(repeats: int = 130, period: float = PERIOD_S) -> dict[str, dict[str, float]]:
    """One step's request to an actor and its result back, at the sessions' pace, by Ray call, by the
    data plane and by ZeroMQ in turn, on a Ray of its own like the server's (half a CPU per actor)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)

    async def there() -> bool:
        return True

    async def measure():
        echo = ray.remote(num_cpus=0.5)(Echo).remote()
        address, router_address = await echo.addresses.remote()
        channel = await Channel.connect(address)
        dealer = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(router_address)
        modality, x = step_windows(SERVED_SIZES, np.random.default_rng(0))[0]
        request = [StepRequest("s", 0, modality, x, np.ones(len(x), bool))]

        async def over_zmq():
            await dealer.send(encode_call(0, "step", (request,), channel.incarnation))
            return decode_reply(await dealer.recv())

        hops = {"ray": lambda: echo.step.remote(request), "tcp": lambda: channel.call("step", (request,), there),
                "zmq": over_zmq}
        times = {name: [] for name in hops}
        for _ in range(repeats):
            for name, hop in hops.items():
                started = time.perf_counter()
                await hop()
                times[name].append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(period)
        channel.close()
        dealer.close()
        return {name: percentiles(t[WARMUP_CALLS:]) for name, t in times.items()}

    try:
        return asyncio.run(measure())
    finally:
        ray.shutdown()


def model_only_table(device: str) -> str:
    """How batching sessions into one call pays off for the model alone, on this device; on a GPU,
    eager steps and steps replayed from CUDA graphs (grf_stream/serving/graphs.py) side by side."""
    ways = {"eager": False, "CUDA graphs": True} if device == "cuda" else {"eager": False}
    name = torch.cuda.get_device_name() if device == "cuda" else platform.machine()
    header = " | ".join(f"{way} p50 ms | {way} p99 ms | {way} steps/s" for way in ways)
    lines = [f"Model only, {device} ({name}):", "", f"| sessions per call | {header} |", "|---|" + "---|---|---|" * len(ways)]
    for sessions in (1, 8, 32, 128, 1024):
        cells = []
        for buckets in ways.values():
            r = model_step_ms(sessions, device, repeats=120, buckets=buckets)
            cells.append(f"{r['p50']:.2f} | {r['p99']:.2f} | {r['steps_per_s']:.0f}")
        lines.append(f"| {sessions} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(max_batch: int, data_plane: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    process = subprocess.Popen(
        [sys.executable, "-m", "grf_stream.serve", f"port={port}", f"max_batch={max_batch}", "max_sessions=512",
         f"data_plane={data_plane}",
         "stats_every_s=1000", "tensorboard_dir=/tmp/grf_serve_bench"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while "grf-stream serving" not in (line := process.stdout.readline()):
        if process.poll() is not None or not line:
            raise SystemExit("server did not start")
    return process, f"tcp://127.0.0.1:{port}"


async def session_load(address: str, name: str, sizes, seconds: float, period: float, records: list) -> None:
    """One session: a features step every `period` seconds; (send time, latency ms) per prediction."""
    import zmq.asyncio

    context = zmq.asyncio.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(address)
    await sock.send(p.encode(p.Hello(name, 0, 0.0, ["audio", "video", "text"], "window")))
    p.decode_reply(await sock.recv())  # welcome
    windows = step_windows(sizes, np.random.default_rng(hash(name) % 2**32))
    sent: dict[int, float] = {}

    async def receive():
        while True:
            reply = p.decode_reply(await sock.recv())
            if isinstance(reply, p.Prediction):
                started = sent.pop(reply.seq)
                records.append((started, (time.perf_counter() - started) * 1000))

    receiver = asyncio.create_task(receive())
    start = time.perf_counter()
    seq = 1
    await asyncio.sleep(np.random.default_rng(seq).uniform(0, period))  # sessions out of phase
    while time.perf_counter() - start < seconds:
        modality, x = windows[seq % 3]
        sent[seq] = time.perf_counter()
        await sock.send(p.encode(p.Features(name, seq, time.time(), modality, x, None)))
        seq += 1
        await asyncio.sleep(max(0.0, start + seq * period - time.perf_counter()))
    await asyncio.sleep(1.0)  # the last answers
    receiver.cancel()
    await sock.send(p.encode(p.Bye(name, seq, time.time())))
    sock.close()


async def load(address: str, sessions: int, seconds: float, sizes, period: float = PERIOD_S) -> list[tuple[float, float]]:
    records: list[tuple[float, float]] = []
    await asyncio.gather(*[session_load(address, f"bench-{sessions}-{i}-{time.time_ns()}", sizes, seconds, period,
                                        records) for i in range(sessions)])
    return records


def summarize(records, seconds: float, warmup_s: float = 1.0) -> dict[str, float]:
    """Percentiles after the first `warmup_s` (connections, first actor calls); rate over the whole run."""
    t0 = min(t for t, _ in records)
    latencies = [ms for t, ms in records if t - t0 >= warmup_s] or [ms for _, ms in records]
    return {**percentiles(latencies),
            "steps_per_s": len(records) / seconds}


def report(model_ms, paced_ms, hops, results, long_run, args) -> str:
    lines = [
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}; the server, "
        "its Ray actors and this load generator share the machine.",
        f"Model-only fusion step (FusionService, one session, 1 thread): back to back p50 {model_ms['p50']:.2f} ms, "
        f"p99 {model_ms['p99']:.2f} ms; one step every {PERIOD_S * 1000:.0f} ms, as a session sends them, "
        f"p50 {paced_ms['p50']:.2f} ms, p99 {paced_ms['p99']:.2f} ms.",
        "The hop to a fusion actor and back carrying one step (an actor that answers at once), at the same "
        f"pace: Ray actor call p50 {hops['ray']['p50']:.2f} ms, p99 {hops['ray']['p99']:.2f} ms; the TCP data plane "
        f"p50 {hops['tcp']['p50']:.2f} ms, p99 {hops['tcp']['p99']:.2f} ms; the same calls over ZeroMQ DEALER/ROUTER "
        f"p50 {hops['zmq']['p50']:.2f} ms, p99 {hops['zmq']['p99']:.2f} ms.",
        "Overhead = end to end minus the model-only step at the sessions' pace (p50 minus p50, p99 minus p99).",
        "",
        "| sessions | mode | data plane | steps/s offered | steps/s answered | p50 ms | p99 ms | overhead p50 ms | "
        "overhead p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (sessions, mode, plane, period), r in results.items():
        lines.append(f"| {sessions} | {mode} | {plane} | {sessions / period:.0f} | {r['steps_per_s']:.0f} | "
                     f"{r['p50']:.1f} | {r['p99']:.1f} | {r['p50'] - paced_ms['p50']:.1f} | "
                     f"{r['p99'] - paced_ms['p99']:.1f} |")
    if long_run:
        lines += ["", f"Long run, 32 sessions batched, {args.long_seconds:.0f} s: p99 {long_run[0]:.1f} ms in the "
                      f"first 10 s, {long_run[1]:.1f} ms in the last 10 s."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--long-seconds", type=float, default=60.0, help="0 skips the long run")
    parser.add_argument("--model-only", metavar="DEVICE", help="only the model's step time, on cpu or cuda")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    if args.model_only:
        print(model_only_table(args.model_only))
        return
    model_ms, paced_ms, hops = model_step_ms(), model_step_ms(repeats=130, period=PERIOD_S), hop_ms()
    sizes = SERVED_SIZES
    results, long_run = {}, None
    for mode, max_batch, plane in (("batched", 64, "tcp"), ("batched", 64, "ray"), ("unbatched", 1, "tcp")):
        process, address = start_server(max_batch, plane)
        try:
            if (mode, plane) == ("batched", "tcp") and args.long_seconds:  # first, on a server with no backlog
                records = asyncio.run(load(address, 32, args.long_seconds, sizes))
                t0 = min(t for t, _ in records)
                first = [ms for t, ms in records if 1.0 <= t - t0 < 11.0]  # after the 1 s warm-up
                last = [ms for t, ms in records if t - t0 > args.long_seconds - 10]
                long_run = (float(np.percentile(first, 99)), float(np.percentile(last, 99)))
            loads = [(sessions, PERIOD_S) for sessions in args.sessions]
            if mode == "batched":  # its capacity: more offered than it can answer
                loads.append((128, PERIOD_S / 2))
            for sessions, period in loads:
                records = asyncio.run(load(address, sessions, args.seconds, sizes, period))
                results[sessions, mode, plane, period] = summarize(records, args.seconds)
                print(sessions, mode, plane, period, results[sessions, mode, plane, period], flush=True)
                time.sleep(10)  # an overloaded run leaves queued steps: let the server drain them
        finally:
            process.terminate()
            process.wait(timeout=30)
    body = report(model_ms, paced_ms, hops, results, long_run, args)
    print("\n" + body)
    if args.write:
        write_section(args.write, "serve-latency", "Serving latency", body, command_line("serve_latency.py"))


if __name__ == "__main__":
    main()
