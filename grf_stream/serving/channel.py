"""The fusion data plane: FusionService calls from the front-end to a fusion service over TCP.

Ray places, restarts and re-seeds the fusion actors (the control plane); the calls that carry the
sessions' steps travel here instead of as Ray actor calls, which cost a few milliseconds each at a
session's pace. The transport is one plain TCP connection per service, each message a frame
(4-byte length, then msgpack): at a session's pace (one call after 100 ms of idling) a round trip
to an actor costs about 0.45 ms, against 0.64 ms for the same calls over ZeroMQ, whose I/O threads
add two thread wake-ups each way (BENCHMARKS.md, "Serving latency").

- `ChannelServer`: beside a FusionService (in its actor's process), a thread of its own accepts
  connections and answers one call at a time: open, step, end_segment, close.
- `Channel`: the front-end's connection to one service; calls may overlap, each reply is matched
  to its call by id. A service whose process died closes its connection: the channel sees that at
  once and fails every call, pending or new, with ChannelLost; a lost connection is never made
  again (the restarted service is reached by a new Channel). A service gone without closing it
  (its node cut off) is noticed while a reply is late: `call` asks the caller whether the service
  is still there (`still_there`), every second.
- A call names the service incarnation it is for (the address ends in `#incarnation`): a restarted
  service that got its predecessor's port refuses it ("elsewhere": ChannelLost) instead of running
  it on state that is not the caller's.
- Calls and replies are msgpack with a fixed schema per type (arrays as dtype, shape and bytes):
  decoding builds only these dataclasses, never arbitrary objects, so a stray peer cannot run code.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import selectors
import socket
import struct
import threading
from typing import Any, Awaitable, Callable

import msgpack
import numpy as np
import torch

from grf_stream.serving.engine import FusionService, FusionState, StepRequest, StepResult, UnknownSession

DATA_PLANES = ("tcp", "ray")  # how steps may reach the fusion actors: this channel, or plain Ray actor calls
LIVENESS_S = 1.0  # a reply later than this makes the channel ask whether its service is still there
DTYPES = frozenset({"<f4", "|b1"})  # the only arrays the calls carry: features, masks, contexts
LENGTH = struct.Struct("<I")  # a frame: its payload's length, then the payload
MAX_FRAME = 1 << 30  # a longer frame is no call of ours: its connection is closed
SEND_TIMEOUT_S = 10.0  # a peer that reads no reply for this long loses its connection, not the service


class ChannelLost(ConnectionError):
    """The service behind a channel is gone (it died, or restarted at another address)."""


class ChannelFailure(RuntimeError):
    """The service raised on this call; the message says what (its state is as before the call)."""


def check_data_plane(name: str) -> None:
    if name not in DATA_PLANES:
        raise ValueError(f"data_plane={name!r}: choose one of {', '.join(DATA_PLANES)}")


# -- the wire: calls and replies ---------------------------------------------------------------------


def _array(a: np.ndarray) -> list:
    return [a.dtype.str, list(a.shape), np.ascontiguousarray(a).tobytes()]


def _to_array(value: list) -> np.ndarray:
    dtype, shape, data = value
    if dtype not in DTYPES:
        raise ValueError(f"array dtype {dtype!r} is not one the data plane carries ({sorted(DTYPES)})")
    return np.frombuffer(data, dtype).reshape(shape)


def _state(s: FusionState | None) -> list | None:
    return None if s is None else [None if s.context is None else _array(s.context), s.segment, s.step, s.modalities,
                                   s.rho]


def _to_state(v: list | None) -> FusionState | None:
    return None if v is None else FusionState(None if v[0] is None else _to_array(v[0]), v[1], v[2], list(v[3]), v[4])


def _request(r: StepRequest) -> list:
    return [r.session, r.seq, r.modality, _array(r.features), _array(r.mask)]


def _to_request(v: list) -> StepRequest:
    return StepRequest(v[0], v[1], v[2], _to_array(v[3]), _to_array(v[4]))


def _result(r: StepResult) -> list:
    context = None if r.context is None else _array(r.context)
    return [r.session, r.seq, r.segment, r.step, r.modality, list(r.modalities), r.value, r.gate, context, r.rho]


def _to_result(v: list) -> StepResult:
    return StepResult(v[0], v[1], v[2], v[3], v[4], tuple(v[5]), v[6], v[7], None if v[8] is None else _to_array(v[8]),
                      v[9])


# method -> (arguments to the wire, from the wire; result to the wire, from the wire)
CALLS: dict[str, tuple[Callable, Callable, Callable, Callable]] = {
    "open": (lambda session, state: [session, _state(state)], lambda v: (v[0], _to_state(v[1])),
             lambda _: None, lambda _: None),
    "step": (lambda requests: [_request(r) for r in requests], lambda v: ([_to_request(r) for r in v],),
             lambda results: [_result(r) for r in results], lambda v: [_to_result(r) for r in v]),
    "end_segment": (lambda session, carry: [session, carry], lambda v: (v[0], v[1]), lambda segment: segment,
                    lambda v: v),
    "close": (lambda session: [session], lambda v: (v[0],), lambda _: None, lambda _: None),
}


def encode_call(call_id: int, method: str, args: tuple, service: str) -> bytes:
    """`service`: the incarnation the call is for (see ChannelServer); another one does not run it."""
    return msgpack.packb([call_id, service, method, CALLS[method][0](*args)], use_bin_type=True)


def decode_call(data: bytes) -> tuple[int, str, str, tuple]:
    """(call id, the incarnation it is for, method, arguments)."""
    call_id, service, method, args = msgpack.unpackb(data, raw=False)
    if method not in CALLS:
        raise ValueError(f"{method!r} is not a data-plane call ({', '.join(CALLS)})")
    return call_id, service, method, CALLS[method][1](args)


def encode_reply(call_id: int, method: str | None, outcome: str, value: Any) -> bytes:
    """outcome "ok" with the method's result, or "unknown_session" / "failed" / "elsewhere" (the call
    was for another incarnation) with a message."""
    body = CALLS[method][2](value) if outcome == "ok" else value
    return msgpack.packb([call_id, method, outcome, body], use_bin_type=True)


def decode_reply(data: bytes) -> tuple[int, Any]:
    """(call id, the result, or the exception the call raised)."""
    call_id, method, outcome, body = msgpack.unpackb(data, raw=False)
    if outcome == "ok":
        return call_id, CALLS[method][3](body)
    failures = {"unknown_session": UnknownSession, "elsewhere": ChannelLost}
    return call_id, failures.get(outcome, ChannelFailure)(body)


# -- the two ends ------------------------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    return LENGTH.pack(len(payload)) + payload


def take_frames(buffer: bytearray) -> list[bytes]:
    """The whole frames at the front of `buffer`, removed from it; a partial one stays."""
    frames = []
    while len(buffer) >= LENGTH.size:
        (size,) = LENGTH.unpack_from(buffer)
        if size > MAX_FRAME:
            raise ValueError(f"a frame of {size} bytes is over the data plane's {MAX_FRAME}")
        if len(buffer) < LENGTH.size + size:
            break
        frames.append(bytes(buffer[LENGTH.size:LENGTH.size + size]))
        del buffer[:LENGTH.size + size]
    return frames


def parse_address(address: str) -> tuple[str, int, str]:
    """tcp://host:port#incarnation -> (host, port, incarnation)."""
    endpoint, _, incarnation = address.partition("#")
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    return host, int(port), incarnation


class ChannelServer:
    """A FusionService answering data-plane calls, one at a time, on a thread of its own.

    Its only other callers should be Ray's calls that read (`sessions`) or run before serving
    (`warm`): the sessions' state changes here alone.
    """

    def __init__(self, service: FusionService, host: str = "127.0.0.1"):
        self.service = service
        self.listener = socket.create_server((host, 0))
        # The OS often gives a restarted actor the port its predecessor had: an incarnation in the
        # address lets a call meant for the predecessor be refused rather than run on the wrong state.
        self.incarnation = secrets.token_hex(8)
        self.address = f"tcp://{host}:{self.listener.getsockname()[1]}#{self.incarnation}"
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.buffers: dict[socket.socket, bytearray] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="fusion-data-plane", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        # OpenMP's thread count is per thread: set on this one too, or torch runs wide here.
        torch.set_num_threads(self.service.threads)
        while not self.stopped.is_set():
            for key, _ in self.selector.select(0.1):
                if key.fileobj is self.listener:
                    self._accept()
                else:
                    self._read(key.fileobj)
        for connection in list(self.buffers):
            self._drop(connection)
        self.selector.close()
        self.listener.close()

    def _accept(self) -> None:
        connection, _ = self.listener.accept()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.settimeout(SEND_TIMEOUT_S)
        self.buffers[connection] = bytearray()
        self.selector.register(connection, selectors.EVENT_READ)

    def _read(self, connection: socket.socket) -> None:
        try:
            data = connection.recv(1 << 20)
            if not data:  # the caller went away
                raise ConnectionError("closed")
            buffer = self.buffers[connection]
            buffer += data
            for call in take_frames(buffer):
                connection.sendall(frame(self.answer(call)))
        except (OSError, ValueError):  # gone, stuck, or no peer of ours: its connection only
            self._drop(connection)

    def _drop(self, connection: socket.socket) -> None:
        self.selector.unregister(connection)
        del self.buffers[connection]
        connection.close()

    def answer(self, data: bytes) -> bytes:
        try:
            call_id, service, method, args = decode_call(data)
        except Exception as error:  # not ours: say so rather than leave the caller waiting
            return encode_reply(-1, None, "failed", f"not a data-plane call: {error}")
        if service != self.incarnation:
            return encode_reply(call_id, method, "elsewhere", f"this is not the fusion service {service} (it is gone)")
        try:
            return encode_reply(call_id, method, "ok", getattr(self.service, method)(*args))
        except UnknownSession as error:
            return encode_reply(call_id, method, "unknown_session", str(error))
        except Exception as error:
            return encode_reply(call_id, method, "failed", f"{type(error).__name__}: {error}")

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


class Channel(asyncio.Protocol):
    """The front-end's end: calls to one ChannelServer, any number in flight, replies matched by id.
    Made with `await Channel.connect(address)`."""

    def __init__(self, address: str):
        self.address = address  # tcp://host:port#incarnation, as ChannelServer.address
        self.incarnation = parse_address(address)[2]
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.pending: dict[int, asyncio.Future] = {}
        self.ids = itertools.count()
        self.lost: str | None = None  # why, once the connection is gone

    @classmethod
    async def connect(cls, address: str) -> Channel:
        """A channel to the service at `address`; ChannelLost if nothing listens there."""
        host, port, _ = parse_address(address)
        channel = cls(address)
        try:
            await asyncio.get_running_loop().create_connection(lambda: channel, host, port)
        except OSError as error:
            raise ChannelLost(f"the fusion service at {address} does not answer: {error}") from None
        return channel

    async def call(self, method: str, args: tuple, still_there: Callable[[], Awaitable[bool]]):
        """The call's result, or the exception it raised there; ChannelLost once the service is gone."""
        if self.lost is not None:
            raise ChannelLost(self.lost)
        call_id = next(self.ids)
        reply = self.pending[call_id] = asyncio.get_running_loop().create_future()
        try:
            self.transport.write(frame(encode_call(call_id, method, args, self.incarnation)))
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(reply), LIVENESS_S)
                except asyncio.TimeoutError:  # a long batch, or a service that is cut off: ask
                    if not await still_there():
                        raise ChannelLost(f"the fusion service at {self.address} is gone") from None
        finally:
            self.pending.pop(call_id, None)

    # asyncio.Protocol: what the connection delivers

    def connection_made(self, transport: asyncio.Transport) -> None:
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            replies = [decode_reply(f) for f in take_frames(self.buffer)]
        except Exception as error:  # not a fusion service's reply: nothing more from it can be trusted
            self.transport.close()
            self._fail_all(f"{self.address} sent something that is not a reply: {error}")
            return
        for call_id, outcome in replies:
            reply = self.pending.get(call_id)
            if reply is None or reply.done():
                continue  # a call that gave up waiting
            if isinstance(outcome, Exception):
                reply.set_exception(outcome)
            else:
                reply.set_result(outcome)

    def connection_lost(self, error: Exception | None) -> None:
        if self.lost is None:
            self._fail_all(f"the fusion service at {self.address} closed its connection (it died)")

    def _fail_all(self, why: str) -> None:
        self.lost = why
        for reply in self.pending.values():
            if not reply.done():
                reply.set_exception(ChannelLost(why))

    def close(self) -> None:
        self._fail_all(f"the channel to {self.address} was closed")
        if self.transport is not None:
            self.transport.close()
