"""The fusion data plane: FusionService calls from the front-end to a fusion service over ZeroMQ.

Ray places, restarts and re-seeds the fusion actors (the control plane); the calls that carry the
sessions' steps travel here instead of as Ray actor calls, which cost a few milliseconds each at a
session's pace against about a tenth of one for a ZeroMQ round trip on the same machine
(BENCHMARKS.md, "Serving latency").

- `ChannelServer`: beside a FusionService (in its actor's process), a ROUTER socket on a thread of
  its own answers one call at a time: open, step, end_segment, close.
- `Channel`: the front-end's DEALER socket to one service; calls may overlap, each reply is matched
  to its call by id. A service whose process died closes its connection: the channel sees that
  within milliseconds (a socket monitor) and fails every call, pending or new, with ChannelLost.
  A service gone without closing it (its node cut off) is noticed while a reply is late: `call`
  asks the caller whether the service is still there (`still_there`), every second.
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
import threading
from typing import Any, Awaitable, Callable

import msgpack
import numpy as np
import torch
import zmq
import zmq.asyncio

from grf_stream.serving.engine import FusionService, FusionState, StepRequest, StepResult, UnknownSession

LIVENESS_S = 1.0  # a reply later than this makes the channel ask whether its service is still there
DTYPES = frozenset({"<f4", "|b1"})  # the only arrays the calls carry: features, masks, contexts


class ChannelLost(ConnectionError):
    """The service behind a channel is gone (it died, or restarted at another address)."""


class ChannelFailure(RuntimeError):
    """The service raised on this call; the message says what (its state is as before the call)."""


# -- the wire: calls and replies ---------------------------------------------------------------------


def _array(a: np.ndarray) -> list:
    return [a.dtype.str, list(a.shape), np.ascontiguousarray(a).tobytes()]


def _to_array(value: list) -> np.ndarray:
    dtype, shape, data = value
    if dtype not in DTYPES:
        raise ValueError(f"array dtype {dtype!r} is not one the data plane carries ({sorted(DTYPES)})")
    return np.frombuffer(data, dtype).reshape(shape)


def _state(s: FusionState | None) -> list | None:
    return None if s is None else [None if s.context is None else _array(s.context), s.segment, s.step, s.modalities]


def _to_state(v: list | None) -> FusionState | None:
    return None if v is None else FusionState(None if v[0] is None else _to_array(v[0]), v[1], v[2], list(v[3]))


def _request(r: StepRequest) -> list:
    return [r.session, r.seq, r.modality, _array(r.features), _array(r.mask)]


def _to_request(v: list) -> StepRequest:
    return StepRequest(v[0], v[1], v[2], _to_array(v[3]), _to_array(v[4]))


def _result(r: StepResult) -> list:
    context = None if r.context is None else _array(r.context)
    return [r.session, r.seq, r.segment, r.step, r.modality, list(r.modalities), r.value, r.gate, context]


def _to_result(v: list) -> StepResult:
    return StepResult(v[0], v[1], v[2], v[3], v[4], tuple(v[5]), v[6], v[7], None if v[8] is None else _to_array(v[8]))


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


class ChannelServer:
    """A FusionService answering data-plane calls, one at a time, on a thread of its own.

    Its only other callers should be Ray's calls that read (`sessions`) or run before serving
    (`warm`): the sessions' state changes here alone.
    """

    def __init__(self, service: FusionService, host: str = "127.0.0.1"):
        self.service = service
        self.socket = zmq.Context.instance().socket(zmq.ROUTER)
        self.socket.linger = 0
        # The OS often gives a restarted actor the port its predecessor had: an incarnation in the
        # address lets a call meant for the predecessor be refused rather than run on the wrong state.
        self.incarnation = secrets.token_hex(8)
        self.address = f"tcp://{host}:{self.socket.bind_to_random_port(f'tcp://{host}')}#{self.incarnation}"
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="fusion-data-plane", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        # OpenMP's thread count is per thread: set on this one too, or torch runs wide here.
        torch.set_num_threads(self.service.threads)
        while not self.stopped.is_set():
            if not self.socket.poll(100):
                continue
            frames = self.socket.recv_multipart()
            if len(frames) == 2:  # [identity, call] from a DEALER
                self.socket.send_multipart([frames[0], self.answer(frames[1])])
        self.socket.close()

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


class Channel:
    """The front-end's end: calls to one ChannelServer, any number in flight, replies matched by id."""

    def __init__(self, address: str, context: zmq.asyncio.Context):
        self.address = address  # endpoint#incarnation, as ChannelServer.address
        endpoint, _, self.incarnation = address.partition("#")
        self.socket = context.socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.connect(endpoint)
        self.pending: dict[int, asyncio.Future] = {}
        self.ids = itertools.count()
        self.lost: str | None = None  # why, once the service's connection closed
        self.monitor = self.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        loop = asyncio.get_running_loop()
        self.receiver, self.watcher = loop.create_task(self._receive()), loop.create_task(self._watch())

    async def call(self, method: str, args: tuple, still_there: Callable[[], Awaitable[bool]]):
        """The call's result, or the exception it raised there; ChannelLost once the service is gone."""
        if self.lost is not None:
            raise ChannelLost(self.lost)
        call_id = next(self.ids)
        reply = self.pending[call_id] = asyncio.get_running_loop().create_future()
        try:
            await self.socket.send(encode_call(call_id, method, args, self.incarnation))
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(reply), LIVENESS_S)
                except asyncio.TimeoutError:  # a long batch, or a service that died: ask
                    if not await still_there():
                        raise ChannelLost(f"the fusion service at {self.address} is gone") from None
        finally:
            self.pending.pop(call_id, None)

    async def _receive(self) -> None:
        while True:
            call_id, outcome = decode_reply(await self.socket.recv())
            reply = self.pending.get(call_id)
            if reply is None or reply.done():
                continue  # a call that gave up waiting
            if isinstance(outcome, Exception):
                reply.set_exception(outcome)
            else:
                reply.set_result(outcome)

    async def _watch(self) -> None:
        # A restarted service listens at another address: a connection that closed stays lost.
        await self.monitor.recv_multipart()  # the one event it watches: EVENT_DISCONNECTED
        self._fail_all(f"the fusion service at {self.address} closed its connection (it died)")

    def _fail_all(self, why: str) -> None:
        self.lost = why
        for reply in self.pending.values():
            if not reply.done():
                reply.set_exception(ChannelLost(why))

    def close(self) -> None:
        self.receiver.cancel()
        self.watcher.cancel()
        self._fail_all(f"the channel to {self.address} was closed")
        self.socket.disable_monitor()
        self.monitor.close()
        self.socket.close()
