"""`python -m grf_stream.serve`: the streaming server.

    python -m grf_stream.serve                                   # embedded local Ray, default model
    python -m grf_stream.serve --checkpoint runs/x/checkpoints/best.pt --address auto
    python -m grf_stream.serve --config configs/serve/local.yaml port=5600 fusion_actors=2

One ZeroMQ ROUTER socket on 127.0.0.1 (by default) takes msgpack messages from any number of
clients (grf_stream/serving/protocol.py); fusion runs in Ray actors, on the GPU when there is one. Every
`stats_every_s` the server writes TensorBoard scalars (step latency p50/p99, steps per second,
active sessions, errors, dropped chunks, mean gate per modality) to `tensorboard_dir`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import zmq
import zmq.asyncio

from grf_stream.config import load_config
from grf_stream.default_model import load_serving_model
from grf_stream.features import EXTRACTORS, feature_spec
from grf_stream.serving import protocol as p
from grf_stream.serving.channel import check_data_plane
from grf_stream.serving.frontend import FrontEnd, FrontEndConfig
from grf_stream.spec import FeatureSpec


# Messages ZeroMQ holds per connection before the socket loop reads them (its default: 1,000). Past
# it ZeroMQ stops reading that connection, and its sender waits: a connection the loop reads slowly
# (a flood, replies.py) then holds at most this many messages in the server, not a thousand.
RECEIVED_UNREAD = 16


@dataclass
class ServeConfig:
    """Everything `python -m grf_stream.serve` can be told."""

    host: str = "127.0.0.1"
    """Interface to bind: 127.0.0.1 keeps the server local; 0.0.0.0 opens it (use curve then)."""
    port: int = 5555
    checkpoint: str = ""
    """A trained checkpoint; empty = the model shipped with the package."""
    address: str = ""
    """Ray cluster: empty = an embedded local Ray; 'auto' or 'ray://host:port' = an existing one."""
    fusion_actors: int = 1
    """Fusion actors; sessions are pinned to one by a hash of their id."""
    extractors_per_modality: int = 1
    """Extractor actors per raw modality (text, audio, video)."""
    use_gpu: bool = False
    """Run each fusion actor on a GPU (set automatically when the cluster has one)."""
    standby_actor: bool = True
    """Keep one more fusion actor warm, where the cluster has room for it (0.5 CPU, or a GPU): it
    takes a lost actor's place at once, its sessions re-seeded; without it, the lost actor's sessions
    wait while Ray restarts it (seconds)."""
    data_plane: str = "tcp"
    """How steps reach the fusion actors: "tcp", a TCP channel per actor (a fraction of a Ray call),
    or "ray", plain Ray actor calls. Ray places and restarts the actors either way."""
    max_sessions: int = 256
    idle_timeout_s: float = 30.0
    max_batch: int = 64
    max_wait_ms: float = 0.0
    """Extra wait to fill a batch; 0 = a batch is what queued while the previous one ran."""
    max_message_bytes: int = 8 * 1024 * 1024
    """A larger message is answered with `too_large`; the connection and its sessions go on."""
    transport_max_bytes: int = 64 * 1024 * 1024
    """ZeroMQ's own cap: a larger message makes ZeroMQ drop the connection (its sessions then time out)."""
    max_waiting_bytes: int = 16 * 1024 * 1024
    """Per session: the bytes of its messages waiting to be taken; more is refused with `busy`."""
    curve_server_key: str = ""
    """CURVE encryption: the server's secret key file (python -m grf_stream.keys); empty = plain TCP."""
    curve_clients_dir: str = ""
    """With CURVE: a directory of the public key files of the clients allowed in; all others get nothing."""
    tensorboard_dir: str = "runs/serve"
    stats_every_s: float = 5.0
    warm: bool = True
    """Run every extractor and the model once before serving, so a session's first chunk is served
    as fast as any other (false only to measure what that saves: bench/first_chunk.py)."""
    plugins: list[str] = field(default_factory=list)
    """Python modules to import before serving, each adding modalities of its own
    (grf_stream.serving.modalities.register); importable where the server and its Ray workers run."""

    def __post_init__(self) -> None:
        check_data_plane(self.data_plane)  # here, before Ray or a model is started


class Server:
    """The socket loop around a FrontEnd: receive, hand over, send what it answers."""

    def __init__(self, frontend: FrontEnd, socket: zmq.asyncio.Socket, config: ServeConfig):
        self.frontend, self.socket, self.config = frontend, socket, config

    async def receive(self) -> None:
        while True:
            # Not copied into Python bytes: an oversized message is refused by its length alone.
            frames = await self.socket.recv_multipart(copy=False)
            if len(frames) != 2:  # a ROUTER sees [identity, payload] from a DEALER
                continue
            pause = await self.frontend.handle(frames[0].bytes, frames[1].buffer)
            # Always yield: a message already waiting is received without yielding, so a client flooding
            # the socket would otherwise starve every session's worker, the batcher and the send loop.
            # A connection that throws most of what it sends away is read more slowly (replies.py).
            await asyncio.sleep(pause)

    async def send(self) -> None:
        while True:
            identity, message = await self.frontend.outbox.get()
            await self.socket.send_multipart([identity, p.encode(message)])

    async def reap(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.config.idle_timeout_s / 4))
            await self.frontend.reap_idle()

    async def run(self) -> None:
        shards = [self.frontend.batcher.run_shard(i) for i in range(self.frontend.fusion.shards)]
        board = StatsBoard(self.frontend, self.config)
        await asyncio.gather(self.receive(), self.send(), self.reap(), *shards, board.run())


class StatsBoard:
    """Live numbers to TensorBoard: latency percentiles, throughput, sessions, errors."""

    def __init__(self, frontend: FrontEnd, config: ServeConfig):
        from torch.utils.tensorboard import SummaryWriter

        self.frontend, self.config = frontend, config
        self.writer = SummaryWriter(config.tensorboard_dir)

    async def run(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(self.config.stats_every_s)
            tick += 1
            numbers = self.frontend.replies.numbers
            for name, value in numbers.now(len(self.frontend.sessions), self.config.stats_every_s).items():
                self.writer.add_scalar(f"serve/{name}", value, tick)
            for modality, values in numbers.take_gates().items():
                self.writer.add_scalar(f"serve/gate_mean/{modality}", float(np.mean(values)), tick)
            self.writer.flush()


def frontend_config(config: ServeConfig) -> FrontEndConfig:
    """The front-end's part of the server's config: one source for every limit, down to the welcome."""
    if config.transport_max_bytes < config.max_message_bytes:
        raise SystemExit(f"transport_max_bytes={config.transport_max_bytes} is below max_message_bytes="
                         f"{config.max_message_bytes}: a message between them could not be answered; raise it")
    return FrontEndConfig(max_sessions=config.max_sessions, idle_timeout_s=config.idle_timeout_s,
                          max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
                          max_waiting_bytes=config.max_waiting_bytes,
                          limits=p.Limits(max_message_bytes=config.max_message_bytes))


def start_ray(config: ServeConfig) -> None:
    if config.address:
        ray.init(address=config.address)
    else:  # never join a cluster by accident; and Ray's workers at the front-end's priority, not nice 15:
        # on a loaded machine a fusion actor at nice 15 waits seconds for the CPU behind any busy process
        ray.init(address="local", include_dashboard=False, _system_config={"worker_niceness": 0})
    if ray.cluster_resources().get("GPU", 0) >= config.fusion_actors:
        config.use_gpu = True


def secure(socket: zmq.asyncio.Socket, context: zmq.asyncio.Context, config: ServeConfig):
    """CURVE on the socket, and pyzmq's authenticator admitting only the allowed clients' keys."""
    from zmq.auth import load_certificate
    from zmq.auth.asyncio import AsyncioAuthenticator

    if not Path(config.curve_clients_dir).is_dir():
        raise SystemExit(f"curve_clients_dir={config.curve_clients_dir!r} is not a directory of client public keys")
    authenticator = AsyncioAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve(domain="*", location=config.curve_clients_dir)
    public, secret = load_certificate(config.curve_server_key)
    if secret is None:
        raise SystemExit(f"{config.curve_server_key} holds no secret key: give the .key_secret file")
    socket.curve_secretkey, socket.curve_publickey, socket.curve_server = secret, public, True
    return authenticator


def refuse_mismatched_features(spec: FeatureSpec, raw: list[str]) -> None:
    """The checkpoint must have been trained on what these extractors produce (raw modalities only:
    `features` messages bring their own)."""
    FeatureSpec({m: spec.modalities[m] for m in raw}).check_produced_by(feature_spec(raw))


def load_plugins(modules: list[str]) -> None:
    """Import the modules that add modalities; one that cannot be imported stops the server, saying why."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:
            raise SystemExit(f"plugins: {module!r} could not be imported ({type(error).__name__}: {error}): give "
                             "a module importable from here (a dotted name, e.g. my_sensors.pulse)") from error


async def serve(config: ServeConfig) -> None:
    from actors.extractors import RayExtractors, start_extractor_pools
    from actors.fusion import RayFusion

    started = time.monotonic()
    load_plugins(config.plugins)
    model, spec, label = load_serving_model(config.checkpoint or None)
    raw = [m for m in model.config.modalities if m in EXTRACTORS]
    refuse_mismatched_features(spec, raw)
    start_ray(config)
    fusion = RayFusion(config.checkpoint or None, config.fusion_actors, config.use_gpu, config.data_plane)
    extractors = RayExtractors(start_extractor_pools(raw, config.extractors_per_modality)) if raw else None
    if config.warm:  # serving only once every actor is up and warm: a first chunk waits for nothing else
        await asyncio.gather(fusion.warm(), *([extractors.warm()] if extractors else []))
    # Last, once everything else is placed (warm): the standby must never take a place an extractor needs.
    standby = config.standby_actor and config.warm and fusion.start_standby()
    rates = {m: spec.modalities[m].rate for m in raw}
    frontend = FrontEnd(model.config.modalities, rates, fusion, extractors, frontend_config(config),
                        feature_spec=spec.to_dict()["modalities"])
    context = zmq.asyncio.Context()
    socket = context.socket(zmq.ROUTER)
    authenticator = secure(socket, context, config) if config.curve_server_key else None
    socket.setsockopt(zmq.MAXMSGSIZE, config.transport_max_bytes)
    socket.setsockopt(zmq.RCVHWM, RECEIVED_UNREAD)
    socket.bind(f"tcp://{config.host}:{config.port}")
    print(f"grf-stream serving {label} on tcp://{config.host}:{config.port} "
          f"({config.fusion_actors} fusion actor(s){' and a standby' if standby else ''}, "
          f"{'GPU' if config.use_gpu else 'CPU'}); modalities "
          f"{dict(model.config.modalities)}; ready in {time.monotonic() - started:.1f} s", flush=True)
    try:
        await Server(frontend, socket, config).run()
    finally:
        frontend.shutdown()
        fusion.shutdown()
        while not frontend.outbox.empty():  # the send loop is gone: say the last words here
            identity, message = frontend.outbox.get_nowait()
            await socket.send_multipart([identity, p.encode(message)])
        if authenticator is not None:
            authenticator.stop()
        socket.close(linger=500)
        context.term()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="a YAML file of configs/serve/")
    parser.add_argument("--checkpoint", help="a trained checkpoint (default: the packaged model)")
    parser.add_argument("--address", help="Ray cluster to join: auto or ray://host:port")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. port=5600 max_sessions=64")
    args = parser.parse_args(argv)
    config = load_config(ServeConfig, args.config, args.overrides)
    config.checkpoint = args.checkpoint or config.checkpoint
    config.address = args.address or config.address
    loop = asyncio.new_event_loop()
    task = loop.create_task(serve(config))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        print("grf-stream stopped", flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
