"""The fusion data plane (grf_stream/serving/channel.py) on real ZeroMQ sockets, without Ray."""

import asyncio
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zmq

from grf_stream.model import GRF, GRFConfig
from grf_stream.serving import channel as c
from grf_stream.serving.engine import FusionService, FusionState, StepRequest, UnknownSession

SIZES = {"text": 12, "audio": 5}


@pytest.fixture
def service():
    torch.manual_seed(0)
    return FusionService(GRF(GRFConfig(modalities=SIZES, d_model=32, num_layers=1, num_heads=2, d_ffn=64)).eval())


@pytest.fixture
def server(service):
    running = c.ChannelServer(service)
    yield running
    running.stop()


def requests(rng, sessions, modality, seq):
    return [StepRequest(s, seq, modality, rng.standard_normal((3, SIZES[modality])).astype(np.float32),
                        np.array([True, True, False])) for s in sessions]


def over_the_channel(address, calls):
    """Each (method, args) through one Channel, in order; the results (or the exceptions raised)."""
    async def run():
        channel = c.Channel(address, zmq.asyncio.Context.instance())

        async def still_there():
            return True

        out = []
        for method, args in calls:
            try:
                out.append(await channel.call(method, args, still_there))
            except Exception as error:
                out.append(error)
        channel.close()
        return out

    return asyncio.run(run())


def test_calls_and_replies_survive_the_wire_exactly():
    rng = np.random.default_rng(0)
    state = FusionState(rng.standard_normal(32).astype(np.float32), 2, 5, ["audio", "text"])
    step = requests(rng, ["a", "b"], "audio", 7)
    for method, args in [("open", ("a", state)), ("open", ("a", None)), ("step", (step,)),
                         ("end_segment", ("a", True)), ("close", ("a",))]:
        call_id, service, decoded_method, decoded = c.decode_call(c.encode_call(3, method, args, "f00d"))
        assert (call_id, service, decoded_method) == (3, "f00d", method)
        for got, sent in zip(decoded, args):
            assert repr(got) == repr(sent)  # arrays included (their repr shows every value here)


def test_steps_over_the_channel_equal_the_service_called_directly(server):
    rng = np.random.default_rng(1)
    first, later = requests(rng, ["a", "b"], "text", 1), requests(rng, ["a", "b"], "audio", 2)
    direct = FusionService(server.service.model)
    for s in ("a", "b"):
        direct.open(s)
    expected = direct.step(first) + direct.step(later)
    got = over_the_channel(server.address, [("open", ("a", None)), ("open", ("b", None)),
                                            ("step", (first,)), ("step", (later,))])
    served = got[2] + got[3]
    assert [r.value for r in served] == [r.value for r in expected]  # bit for bit: torch on one thread there too
    assert [(r.session, r.seq, r.step, r.modalities) for r in served] == \
           [(r.session, r.seq, r.step, r.modalities) for r in expected]
    np.testing.assert_array_equal(served[-1].context, expected[-1].context)


def test_a_failing_call_raises_at_the_caller_and_leaves_the_service_as_it_was(server):
    rng = np.random.default_rng(2)
    bad = StepRequest("a", 2, "text", rng.standard_normal((3, 99)).astype(np.float32), np.ones(3, bool))  # wrong d
    got = over_the_channel(server.address, [("open", ("a", None)), ("step", (requests(rng, ["a"], "text", 1),)),
                                            ("step", ([bad],)), ("step", (requests(rng, ["nobody"], "text", 1),))])
    assert isinstance(got[2], c.ChannelFailure) and "expected (B, T, 12)" in str(got[2])
    assert isinstance(got[3], UnknownSession)  # what makes the backend re-seed a restarted actor
    assert server.service.states["a"].step == 1  # the failed step moved nothing


def test_bytes_that_are_not_a_call_are_answered_not_left_waiting(server):
    with zmq.Context() as context, context.socket(zmq.DEALER) as sock:
        sock.linger = 0
        sock.connect(server.address.partition("#")[0])
        sock.send(b"\x94\x01\xa0\xa4nope\x90")  # msgpack, but no such call
        assert sock.poll(5000)
        call_id, outcome = c.decode_reply(sock.recv())
    assert isinstance(outcome, c.ChannelFailure) and "not a data-plane call" in str(outcome)


def test_a_service_that_is_gone_is_noticed_by_asking_whether_it_is_still_there(monkeypatch, service):
    monkeypatch.setattr(c, "LIVENESS_S", 0.1)
    server = c.ChannelServer(service)
    server.stop()  # gone: nothing answers at its address

    async def run():
        channel = c.Channel(server.address, zmq.asyncio.Context.instance())
        asked = []

        async def still_there():
            asked.append(True)
            return len(asked) < 3  # the control plane says so on the third question

        try:
            await channel.call("close", ("a",), still_there)
        finally:
            channel.close()
        return asked

    with pytest.raises(c.ChannelLost):
        asyncio.run(run())


SERVICE_IN_A_PROCESS = f"""
import time, torch
from grf_stream.model import GRF, GRFConfig
from grf_stream.serving.channel import ChannelServer
from grf_stream.serving.engine import FusionService
service = FusionService(GRF(GRFConfig(modalities={SIZES}, d_model=32, num_layers=1, num_heads=2, d_ffn=64)).eval())
step = service.step
service.step = lambda requests: (time.sleep(0.5), step(requests))[1]  # still running when it is killed
print(ChannelServer(service).address, flush=True)
time.sleep(120)
"""


def test_a_service_whose_process_dies_fails_every_call_at_once(monkeypatch):
    """A killed service's process closes its connection: the call in flight and every later one fail
    with ChannelLost within milliseconds, without a liveness period or a question to the control plane."""
    monkeypatch.setattr(c, "LIVENESS_S", 0.2)
    process = subprocess.Popen([sys.executable, "-c", SERVICE_IN_A_PROCESS], stdout=subprocess.PIPE, text=True)
    address = process.stdout.readline().strip()

    async def run():
        channel = c.Channel(address, zmq.asyncio.Context.instance())
        asked = []

        async def still_there():
            asked.append(True)
            return len(asked) < 3  # a control plane that learns of the death later

        await channel.call("open", ("a", None), still_there)
        step = requests(np.random.default_rng(0), ["a"], "text", 0)
        in_flight = asyncio.ensure_future(channel.call("step", (step,), still_there))
        await asyncio.sleep(0.1)
        process.kill()
        killed = time.monotonic()
        outcomes = await asyncio.gather(in_flight, channel.call("close", ("a",), still_there), return_exceptions=True)
        waited = time.monotonic() - killed
        channel.close()
        return outcomes, asked, waited

    try:
        outcomes, asked, waited = asyncio.run(run())
    finally:
        process.kill()
        process.wait()
    assert all(isinstance(o, c.ChannelLost) and "closed its connection" in str(o) for o in outcomes), outcomes
    assert asked == [] and waited < c.LIVENESS_S


def test_a_call_for_another_incarnation_at_the_same_address_is_refused_not_run(server):
    """A restarted service may get its predecessor's port: a call meant for the predecessor reaches it,
    is refused (ChannelLost) and leaves its state alone."""
    endpoint, _, _ = server.address.partition("#")
    [outcome] = over_the_channel(f"{endpoint}#0123456789abcdef", [("open", ("a", None))])
    assert isinstance(outcome, c.ChannelLost) and "is gone" in str(outcome)
    assert server.service.sessions() == []
    assert over_the_channel(server.address, [("open", ("a", None))]) == [None]
    assert server.service.sessions() == ["a"]


def test_arrays_of_other_dtypes_are_refused():
    step = StepRequest("a", 1, "text", np.zeros((1, 12), np.float32), np.ones(1, bool))
    call = c.encode_call(1, "step", ([step],), "f00d")
    tampered = call.replace(b"<f4", b"|O8")
    with pytest.raises(ValueError, match="dtype"):
        c.decode_call(tampered)
